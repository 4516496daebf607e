"""The limits and batching of `kcap serve`, apart from the server so that the command line reads them cheaply."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """The limits and batching of `kcap serve` (its flags of the same names).

    Example:

    >>> ServeSettings(max_batch_size=1).max_upload_bytes  # batching off, the default upload limit
    20971520
    """

    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_upload_mb: float = 20.0
    max_pixels: int = 50_000_000
    timeout_s: float = 30.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
