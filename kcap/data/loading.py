"""Loading a run's data: read (or generate) it, check it, split it, leave out what `on_bad_image` says.

Example:

```python
from kcap.data.loading import load_checked_dataset
from kcap.training.config import TrainConfig

settings = TrainConfig(data="flickr8k/captions.txt", on_bad_image="skip").data_settings()
dataset, report = load_checked_dataset(settings)
dataset.subset("train")        # the training images, each with its captions
```

`DataSettings` holds what this module reads of a run's configuration.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from kcap.data.check import DataCheckError, DataReport, check_data
from kcap.data.dataset import CaptionDataset
from kcap.data.splits import TEST_FRACTION, VAL_FRACTION, assign_splits, restore_splits
from kcap.utils import count
from kcap.utils.files import read_json

log = logging.getLogger("kcap")

# `data` that names kcap's embedded synthetic set rather than a caption file.
SYNTHETIC = "synthetic"
# What a run does with images and caption rows the data check refuses (`apply_on_bad_image`).
ON_BAD_IMAGE = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """What `load_checked_dataset` reads: the data, how to split it, what to do with bad images.

    Each field is the `kcap.training.config.TrainConfig` setting of the same name.
    """

    data: str  # a caption file or a folder holding one, or SYNTHETIC
    images: str | None  # the images folder; None: found beside the caption file
    format: str  # a caption file format (`kcap.data.caption_files.caption_formats()`)
    synthetic_images: int
    synthetic_image_size: int
    seed: int  # of the synthetic set and of the split draw
    val_fraction: float
    test_fraction: float
    on_bad_image: str  # one of ON_BAD_IMAGE
    full_decode: bool  # the data check decodes every image in full

    @property
    def is_synthetic(self) -> bool:
        return self.data == SYNTHETIC


def apply_on_bad_image(report: DataReport, on_bad_image: str) -> CaptionDataset:
    """The data set to train on: unchanged when clean; without the bad images under `"skip"`;
    a `DataCheckError` listing every problem under `"error"`.

    Example: `dataset = apply_on_bad_image(check_data("flickr8k"), "skip")`.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}.")
    dataset = report.dataset
    if report.ok:
        return dataset
    if on_bad_image == "error":
        raise DataCheckError(
            f"The data check found problems:\n{report.format()}\n"
            "Fix them, or pass --on-bad-image skip to train without the bad images and rows."
        )
    bad = report.bad_images
    dataset.images = [image for image in dataset.images if str(image.path) not in bad]
    if not dataset.images:
        raise DataCheckError(f"The data check left nothing to train on:\n{report.format()}")
    return dataset


def load_checked_dataset(
    settings: DataSettings, progress: bool = True, run_splits: str | Path | None = None
) -> tuple[CaptionDataset, DataReport]:
    """The data a run names, checked and split: what training, `kcap features` and `kcap tune` read.

    Reads (or generates) the data, runs the data check, and gives every image a
    split. Splits are drawn over every readable image before bad ones are left
    out, so the split of a good image never depends on which others are bad. A
    run being resumed gives its `splits.json` as `run_splits` and keeps those
    splits (`kcap.data.splits.restore_splits`).
    """
    from kcap.data.synthetic import cached_synthetic_dataset

    synthetic = dict(num_images=settings.synthetic_images, seed=settings.seed, image_size=settings.synthetic_image_size)
    if settings.is_synthetic:
        data = cached_synthetic_dataset(**synthetic)
        images, data_format = None, "auto"
    else:
        # Absolute: the run's splits.json then names images that `kcap evaluate` (and a
        # resumed run) finds from any working directory.
        data = os.path.abspath(settings.data)
        images = os.path.abspath(settings.images) if settings.images else None
        data_format = settings.format
    report = check_data(data, images, data_format, settings.full_decode, progress=progress)
    if settings.is_synthetic and not report.ok:
        # kcap's own cache, not the user's data: nothing for them to fix, so it heals itself.
        log.warning("The cached synthetic set %s is damaged (%s); writing it again.", Path(data).parent, report.errors[0])
        data = cached_synthetic_dataset(**synthetic, force=True)
        report = check_data(data, images, data_format, settings.full_decode, progress=progress)
    given = {id(image) for image in report.dataset.images if image.split is not None}
    assign_splits(report.dataset, settings.val_fraction, settings.test_fraction, seed=settings.seed)
    if run_splits is not None:
        # Before bad images are left out: one found bad since the run began, or one the run
        # left out when it began, is not a change of data.
        left_out = set(report.bad_images) | _skipped_before(Path(run_splits).parent / "config.json")
        restore_splits(report.dataset, read_json(run_splits, "The run's split file"), run_splits, left_out)
    dataset = apply_on_bad_image(report, settings.on_bad_image)
    sizes = dataset.split_sizes()
    used = [image for image in dataset.images if image.split is not None]
    origin = (
        f"kept from {run_splits}" if run_splits is not None
        else _split_origin(settings, sum(id(image) in given for image in used), len(used))
    )
    excluded = f"; {len(dataset.excluded)} in no split list, left out" if dataset.excluded else ""
    log.info(
        "Data: %s, %d images (train %d, val %d, test %d%s); splits %s.",
        dataset.source, len(used), sizes["train"], sizes["val"], sizes["test"], excluded, origin,
    )
    # The synthetic set (embedded, or written out by `kcap data synthetic`, which leaves its
    # synthetic.json beside the captions) draws each image's five captions with replacement,
    # so it repeats some word for word by design: nothing its user could act on.
    ours = settings.is_synthetic or (Path(dataset.source).parent / "synthetic.json").is_file()
    if report.warnings and not ours:
        # Only a few: a caption file can repeat rows by the thousand.
        shown = [f"  {p}" for p in report.warnings[:3]]
        if len(report.warnings) > 3:
            shown.append(f"  ... and {len(report.warnings) - 3} more (`kcap data check` lists them all)")
        log.warning("Data check: %s (nothing left out):\n%s", count(len(report.warnings), "warning"), "\n".join(shown))
    if not report.ok:
        skipped = report.skipped_json()
        log.warning(
            "--on-bad-image skip: leaving out %s and %s:\n%s",
            count(len(skipped["images"]), "image"), count(len(skipped["rows"]), "caption row"),
            "\n".join(f"  {p}" for p in report.errors),
        )
    return dataset, report


def _skipped_before(run_config: Path) -> set[str]:
    """The images a run's `config.json` says `--on-bad-image skip` left out when it began."""
    if not run_config.is_file():
        return set()
    skipped = read_json(run_config, "The run's config").get("data", {}).get("skipped") or {}
    return {item["path"] for item in skipped.get("images", [])}


def _split_origin(settings: DataSettings, given: int, total: int) -> str:
    """Where the splits of `total` images came from, `given` of them by the data itself."""
    drawn = f"drawn at random by image (--seed {settings.seed}, --val-fraction {settings.val_fraction:g}, " \
            f"--test-fraction {settings.test_fraction:g})"
    if given == 0:
        return drawn
    if given == total and (settings.val_fraction, settings.test_fraction) != (VAL_FRACTION, TEST_FRACTION):
        log.warning(
            "--val-fraction and --test-fraction do not apply: the data gives every image its split "
            "(split lists, a split column or a split field)."
        )
    if given == total:
        return "as the data gives them (split lists, a split column or a split field)"
    return f"of {given} images as the data gives them, the other {total - given} {drawn}"
