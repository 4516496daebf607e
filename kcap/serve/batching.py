"""Dynamic batching: requests that arrive together are run as one batch.

One asyncio task collects queued items into a batch (up to `max_batch_size`,
waiting at most `max_wait_s` after the oldest arrived) and runs it on one
worker thread, so the event loop keeps accepting requests meanwhile and the
next batch fills while the model works. It waits for more only while some are
on their way (`expecting`: requests still being read and decoded), so a lone
request is run at once rather than after `max_wait_s`. A full queue refuses
at once (`QueueFull`), and a caller that stops waiting leaves its item to be skipped.

Example:

```python
batcher = Batcher(lambda items: [x * 2 for x in items], max_batch_size=16, max_wait_s=0.01, max_queue=64)
await batcher.start()
with batcher.expecting():
    value = 21  # read and check a request here: the batcher waits for it
    assert await batcher.submit(value, timeout_s=5) == 42
await batcher.stop()
```
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class QueueFull(Exception):
    """The batcher's queue holds `max_queue` items: the caller should answer 503 and the client retry."""


@dataclasses.dataclass
class _Item:
    value: Any
    future: asyncio.Future
    arrived: float


class Batcher:
    """Runs `run_batch(values) -> results` (one result per value, in order) over batches of queued values.

    Args:
        run_batch: called on the worker thread with up to `max_batch_size` values.
        max_batch_size: the most values in one call; 1 turns batching off.
        max_wait_s: how long a value may wait for others to join its batch.
        max_queue: values waiting beyond this are refused (`QueueFull`).
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], max_batch_size: int,
                 max_wait_s: float, max_queue: int):
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be 1 or more, max_wait_s 0 or more.")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._expected = 0
        # One thread: the model runs one batch at a time, each with all the cores.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kcap-batch")

    async def start(self) -> None:
        """Starts the collecting task on the running event loop."""
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def expecting(self):
        """Around a request's reading and decoding, on the event loop: a batch being collected waits for it."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1

    async def submit(self, value: Any, timeout_s: float) -> Any:
        """Queues `value` and waits for its result; raises `QueueFull`, `TimeoutError`, or `run_batch`'s error."""
        loop = asyncio.get_running_loop()
        item = _Item(value, loop.create_future(), loop.time())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests are already waiting") from None
        # On a timeout wait_for cancels the future, and the collector skips the item.
        return await asyncio.wait_for(item.future, timeout_s)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = batch[0].arrived + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or not self._expected:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [i.value for i in batch])
            except Exception as error:  # every waiting caller gets the batch's error, and the loop goes on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
