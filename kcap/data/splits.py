"""Splitting a data set by image, never by caption row."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from kcap.data.dataset import CaptionDataset
from kcap.utils import count

log = logging.getLogger("kcap")

# The default fractions of images drawn for validation and for test.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1


def assign_splits(
    dataset: CaptionDataset,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
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


def restore_splits(
    dataset: CaptionDataset, manifest: dict, manifest_path: str | Path, left_out: Collection[str] = ()
) -> CaptionDataset:
    """Gives every image the split a run recorded for it in `splits.json` (`manifest`).

    A resumed run must not draw its splits again: a caption file with its rows in
    another order would draw other ones and put test images into training. The
    images and their captions (in any order) must be those of the manifest;
    anything else is refused, naming what changed. Images that moved together
    (the same files below another images folder) are the same data. Images in
    `left_out` (bad files, now or when the run began) may be missing from the
    manifest: they get no split, so the run leaves them out as before.
    """
    stored_paths = {
        os.path.abspath(item["image"]): (split, sorted(item["captions"]))
        for split, items in manifest["splits"].items() for item in items
    }
    old_dir = os.path.abspath(manifest.get("images_dir") or "")
    new_dir = os.path.abspath(dataset.images_dir)
    # Moved: none of the run's images is where it was, and the images folder is elsewhere.
    moved = bool(manifest.get("images_dir")) and old_dir != new_dir and not any(
        str(image.path) in stored_paths for image in dataset.images
    )

    def key(path: str, folder: str) -> str:
        return os.path.relpath(path, folder) if moved else path

    stored = {key(path, old_dir): value for path, value in stored_paths.items()}
    # Bad now (under the new folder) or left out when the run began (under the old one).
    skipped = {key(str(path), folder) for path in left_out for folder in (new_dir, old_dir)}
    current = {
        key(str(image.path), new_dir): sorted(image.captions) for image in dataset.images
        if key(str(image.path), new_dir) in stored or key(str(image.path), new_dir) not in skipped
    }
    changes = _changes(stored, current)
    if changes:
        details = "; ".join(f"{count(len(names), 'image')} {what} (e.g. {names[0]})" for what, names in changes)
        where = f" (names below {new_dir}, which the run had at {old_dir})" if moved else ""
        raise ValueError(
            f"{dataset.source} no longer holds the data this run started with ({manifest_path}): {details}{where}. "
            "Resuming would draw new splits and could train on test images; give the data the run "
            "started with, or start a new --run-dir."
        )
    if moved:
        log.info("The images of this run moved from %s to %s; resuming with them there.", old_dir, new_dir)
    for image in dataset.images:
        name = key(str(image.path), new_dir)
        image.split = stored[name][0] if name in current else None
    return dataset


def _changes(stored: dict, current: dict) -> list[tuple[str, list[str]]]:
    """What differs between `{image: (split, captions)}` and `{image: captions}`, by kind of change."""
    return [
        (what, names) for what, names in (
            ("added", [p for p in current if p not in stored]),
            ("removed", [p for p in stored if p not in current]),
            ("with other captions", [p for p in current if p in stored and stored[p][1] != current[p]]),
        ) if names
    ]
