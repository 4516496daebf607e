"""Per-channel RGB statistics of the training images, in one streaming pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from kcap.data.pipeline import image_dataset


def channel_statistics(
    image_paths: Sequence[str], image_size: Sequence[int], batch_size: int = 64, progress: bool = True
) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each RGB channel, over all pixels of all images.

    Images are resized to `image_size` first, as the model sees them. Sums are
    kept in float64, so the pass is exact enough for any data set size and
    needs memory for one batch only. The result feeds
    `ImagePreprocessing("dataset", mean, std)`, which divides by the standard
    deviation (not the variance).

    Example:

    ```python
    mean, std = channel_statistics([str(i.path) for i in dataset.subset("train")], (299, 299))
    ```
    """
    if not image_paths:
        raise ValueError("No images to compute channel statistics over.")
    total = np.zeros(3, np.float64)
    total_sq = np.zeros(3, np.float64)
    count = 0
    batches = image_dataset(list(image_paths), image_size, batch_size)
    with tqdm(total=len(image_paths), unit="img", desc="channel statistics", disable=not progress) as bar:
        for batch in batches:
            pixels = batch["images"].numpy().reshape(-1, 3).astype(np.float64)
            total += pixels.sum(axis=0)
            total_sq += np.square(pixels).sum(axis=0)
            count += len(pixels)
            bar.update(len(batch["images"]))
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()
