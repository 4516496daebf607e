"""A disk cache of backbone features: the frozen backbone runs once per image, ever.

Layout of one cache (a folder named by its key):

```
<cache_dir>/<key>/
  meta.json       what the key was made of, the image list and the array shape
  features.npy    float16 (images, h, w, channels), memory-mapped
  progress.json   how many images are done (the build resumes from there)
```

The key hashes the backbone's architecture and weights, the preprocessing,
the image size and every image file's path, size and modification time, so
a cache built for other weights or other image files is never used. Training
reads rows through a memory map: RAM stays bounded when the cache is larger
than memory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from kcap.data.images import DECODING
from kcap.data.pipeline import image_dataset
from kcap.utils.files import atomic_write_json, exclusive_use

if TYPE_CHECKING:  # the model imports nothing of the data side
    from kcap.model.captioner import Captioner

CACHE_FORMAT = 1

log = logging.getLogger("kcap")


def default_cache_dir() -> Path:
    root = os.environ.get("KCAP_CACHE_DIR") or Path.home() / ".cache" / "kcap"
    return Path(root) / "features"


def _write_all(file, array: np.ndarray) -> None:
    # An unbuffered write may take only part of the bytes (a disk filling up).
    view = memoryview(array).cast("B")
    while view:
        view = view[file.write(view):]


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(variable.path.encode())
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def _file_identity(path: str) -> list:
    stat = os.stat(path)
    return [str(path), stat.st_size, stat.st_mtime_ns]


def cache_key(model: Captioner, image_paths: Sequence[str]) -> dict:
    """What a cache's features depend on (JSON-able); its hash names the folder."""
    return {
        "format": CACHE_FORMAT,
        "backbone": json.loads(model.backbone.to_json()),
        "backbone_weights": _weights_digest(model.backbone),
        "preprocessing": model.preprocessing.get_config() | {"name": None},
        "image_size": list(model.image_size),
        "decoding": DECODING,
        "images": [_file_identity(p) for p in image_paths],
    }


class FeatureCache:
    """Backbone features of a fixed list of images, stored as float16 on disk.

    Example:

    ```python
    cache = FeatureCache.for_model(model, [str(i.path) for i in dataset])
    cache.build(model)                    # a no-op when it is already complete
    rows = cache.rows([str(image.path)])  # row of each image in the array
    ```
    """

    save_every_s = 5.0  # how often a build records its progress

    def __init__(self, directory: str | Path, image_paths: Sequence[str], feature_shape: Sequence[int]):
        self.directory = Path(directory)
        self.image_paths = [str(p) for p in image_paths]
        self.feature_shape = tuple(int(d) for d in feature_shape)
        self._rows = {path: i for i, path in enumerate(self.image_paths)}
        self._key: dict | None = None  # set by for_model, which has it already

    @classmethod
    def for_model(cls, model: Captioner, image_paths: Sequence[str], cache_dir: str | Path | None = None) -> "FeatureCache":
        """The cache of `model`'s backbone features for `image_paths` (unique paths, in order)."""
        image_paths = list(dict.fromkeys(str(p) for p in image_paths))
        key = cache_key(model, image_paths)
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        cache = cls(Path(cache_dir or default_cache_dir()) / name, image_paths, model.feature_shape)
        cache._key = key
        return cache

    # -- files ---------------------------------------------------------------

    meta_path = property(lambda self: self.directory / "meta.json")
    array_path = property(lambda self: self.directory / "features.npy")
    progress_path = property(lambda self: self.directory / "progress.json")

    @property
    def num_done(self) -> int:
        """Images whose features are on disk; 0 for a cache whose files are missing or damaged."""
        return self._progress()[0]

    def _progress(self) -> tuple[int, str | None]:
        """`(num_done, damage)`, from one read of the files."""
        if not self.progress_path.is_file() or not self.array_path.is_file():
            return 0, None
        try:
            done = json.loads(self.progress_path.read_text())["done"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return 0, f"{self.progress_path} cannot be read ({type(error).__name__}: {error})"
        if not isinstance(done, int) or not 0 <= done <= len(self.image_paths):
            return 0, f"{self.progress_path} records {done!r} images done, of {len(self.image_paths)}"
        try:
            array = np.load(self.array_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            return 0, f"{self.array_path} cannot be read ({error})"
        expected = (len(self.image_paths), *self.feature_shape)
        if array.shape != expected or array.dtype != np.float16:
            return 0, f"{self.array_path} holds {array.dtype} {array.shape}, not float16 {expected}"
        return done, None

    def is_complete(self) -> bool:
        return self.num_done == len(self.image_paths)

    @property
    def size_bytes(self) -> int:
        return self.array_path.stat().st_size if self.array_path.is_file() else 0

    # -- building ------------------------------------------------------------

    def build(self, model: Captioner, batch_size: int = 32, progress: bool = True) -> dict:
        """Runs the backbone over every image not yet cached; resumes a killed build.

        Returns build statistics: images computed, seconds, images/s. A build
        that another process is running on the same cache is refused: two
        writers of one array could record rows that the other one had cleared.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with exclusive_use(self.directory, "kcap process building this feature cache"):
            return self._build(model, batch_size, progress)

    def _build(self, model, batch_size: int, progress: bool) -> dict:
        total = len(self.image_paths)
        # Under the lock: a process that held it before may have finished the cache.
        done, damage = self._progress()
        if damage:
            # kcap's own derived files: computing them again loses nothing but time.
            log.warning("The feature cache %s is damaged: %s. Computing it again.", self.directory, damage)
        if done == total:
            return {"computed": 0, "seconds": 0.0, "images_per_s": None, "reused": True}
        row_bytes = int(np.prod(self.feature_shape)) * np.dtype(np.float16).itemsize
        # The array file is sparse until written: a disk too small would fail only
        # after minutes of backbone work.
        needed, free = (total - done) * row_bytes, shutil.disk_usage(self.directory).free
        if needed > free:
            raise OSError(
                errno.ENOSPC,
                f"The feature cache {self.directory} needs {needed / 2**20:,.1f} MiB more for its "
                f"{total - done} images left, but the disk has only {free / 2**20:,.1f} MiB free. "
                "Free some space or give another --cache-dir, then rerun the same command.",
            )
        start = time.perf_counter()
        # Made before the files so that the first images decode while they are set up.
        batches = iter(image_dataset(self.image_paths[done:], model.image_size, batch_size))
        if done == 0:  # (num_done is 0 when the array file is missing or damaged too)
            # A count left from an earlier array must not vouch for the new one's rows.
            self.progress_path.unlink(missing_ok=True)
            shape = (total, *self.feature_shape)
            key = self._key or cache_key(model, self.image_paths)
            atomic_write_json(self.meta_path, {**key, "shape": list(shape), "dtype": "float16"})
            # Writes the .npy header and sizes the file; the rows are written below.
            np.lib.format.open_memmap(self.array_path, mode="w+", dtype=np.float16, shape=shape)
        data_offset = np.load(self.array_path, mmap_mode="r").offset
        first = recorded = done
        extract = model.feature_extractor()
        last_save = start
        # Plain writes, not a writable memory map: a full disk is then an OSError,
        # not a SIGBUS that kills the process at a mapped page with no room behind
        # it; and on ext4 write() takes a fifth of the CPU of first stores to
        # mapped pages (each one a page fault with a journal handle). Unbuffered, so
        # that a failed write is not retried by close() with nothing left to say.
        with (
            open(self.array_path, "r+b", buffering=0) as file,
            tqdm(total=total, initial=done, unit="img", desc="caching features", disable=not progress) as bar,
        ):
            file.seek(data_offset + done * row_bytes)
            for batch in batches:
                features = np.ascontiguousarray(extract(batch["images"]), dtype=np.float16)
                now = time.perf_counter()
                save = now - last_save > self.save_every_s or done + len(features) == total
                try:
                    _write_all(file, features)
                    if save:
                        # Features first, then the count: a build killed in between redoes
                        # at most the last few seconds' images.
                        os.fsync(file.fileno())
                except OSError as error:
                    raise self._write_error(error, recorded) from error
                done += len(features)
                bar.update(len(features))
                if save:
                    atomic_write_json(self.progress_path, {"done": done})
                    recorded, last_save = done, now
        seconds = time.perf_counter() - start
        computed = total - first
        return {"computed": computed, "seconds": seconds, "images_per_s": computed / seconds if seconds else None, "reused": False}

    def _write_error(self, error: OSError, recorded: int) -> OSError:
        # A bare "[Errno 28] No space left on device" would not say which file.
        advice = "free some space or give another --cache-dir, then rerun" if error.errno == errno.ENOSPC else "rerun"
        return OSError(
            error.errno,
            f"Writing the feature cache {self.array_path} failed: {error.strerror or error}. "
            f"{recorded} of its {len(self.image_paths)} images are recorded; {advice} the same command to "
            "compute the rest.",
        )

    # -- reading -------------------------------------------------------------

    def rows(self, image_paths: Sequence[str]) -> np.ndarray:
        """Row index in the array of each image path."""
        try:
            return np.asarray([self._rows[str(p)] for p in image_paths], dtype=np.int64)
        except KeyError as error:
            raise KeyError(f"Image {error.args[0]} is not in the feature cache {self.directory}.") from None

    def open(self) -> np.memmap:
        """The whole array, read-only and memory-mapped."""
        done, damage = self._progress()
        if damage:
            raise RuntimeError(
                f"The feature cache {self.directory} is damaged: {damage}. Run `kcap features` (or train "
                "with --cache-features) to compute it again."
            )
        if done != len(self.image_paths):
            raise RuntimeError(
                f"The feature cache {self.directory} is incomplete ({done}/{len(self.image_paths)}); "
                "run `kcap features` (or train with --cache-features) to finish it."
            )
        return np.load(self.array_path, mmap_mode="r")

    def gather_fn(self):
        """A function from a batch of row indices (int64 tensor) to float16 features, for tf.data."""
        array = self.open()
        shape = self.feature_shape

        def gather(indices: np.ndarray) -> np.ndarray:
            # Sorted reads are sequential on disk; then put them back in batch order.
            order = np.argsort(indices, kind="stable")
            out = np.empty((len(indices), *shape), np.float16)
            out[order] = array[indices[order]]
            return out

        def gather_tf(indices):
            features = tf.numpy_function(gather, [indices], tf.float16, stateful=False)
            features.set_shape([None, *shape])
            return features

        return gather_tf
