"""From `--data` to a split `CaptionDataset`."""

from __future__ import annotations

from kcap.data.caption_files import read_captions
from kcap.data.dataset import CaptionDataset
from kcap.data.splits import assign_splits
from kcap.data.synthetic import cached_synthetic_dataset
from kcap.training.config import TrainConfig


def load_dataset(config: TrainConfig) -> CaptionDataset:
    """Reads (or generates) the data a run names and gives every image a split."""
    if config.is_synthetic:
        path = cached_synthetic_dataset(
            num_images=config.synthetic_images, seed=config.seed, image_size=config.synthetic_image_size
        )
        dataset = read_captions(path)
    else:
        dataset = read_captions(config.data, config.images, config.format)
    return assign_splits(dataset, config.val_fraction, config.test_fraction, seed=config.seed)
