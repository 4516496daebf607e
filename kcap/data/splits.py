"""Splitting a data set by image, never by caption row."""

from __future__ import annotations

import numpy as np

from kcap.data.dataset import CaptionDataset


def assign_splits(
    dataset: CaptionDataset,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> CaptionDataset:
    """Gives every image without a split one of train/val/test, at random.

    All captions of an image travel with it, so no image is ever in two
    splits. Images that already have a split (from split lists or a split
    column) keep it. The draw depends only on `seed` and the image order.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1).")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must leave images for training; got "
            f"{val_fraction} + {test_fraction}."
        )
    unassigned = [image for image in dataset.images if image.split is None]
    order = np.random.default_rng(seed).permutation(len(unassigned))
    num_test = int(round(test_fraction * len(unassigned)))
    num_val = int(round(val_fraction * len(unassigned)))
    for rank, index in enumerate(order):
        if rank < num_test:
            split = "test"
        elif rank < num_test + num_val:
            split = "val"
        else:
            split = "train"
        unassigned[index].split = split
    return dataset
