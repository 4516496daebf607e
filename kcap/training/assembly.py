"""What a run trains on, assembled one way for `kcap train` and for every tuning trial.

From a resolved `TrainConfig` to `model.fit`'s arguments, in four steps:

1. `prepare_data`: the checked, split data set, the vocabulary and the channel statistics;
2. `with_feature_cache` (`--cache-features`): the backbone's features, built here or awaited from the chief;
3. `fit_arguments`: the training and validation datasets and `model.fit`'s other data arguments;
4. `validation_captioning`: the callback that adds `val_bleu4`/`val_cider` to the epoch's logs.

The trainer then adds the run directory's callbacks, and a tuning trial keras-tuner's.

Example:

```python
config = TrainConfig(data="synthetic", epochs=2).resolved()
data = prepare_data(config)
model = build_captioner(config, data.vocabulary, data.normalization)
model.fit(**fit_arguments(config, data), callbacks=[validation_captioning(config, data)])
```
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcap.data.decode_failures import explain_decode_failures
from kcap.data.dataset import CaptionDataset, CaptionedImage
from kcap.data.feature_cache import FeatureCache
from kcap.data.loading import load_checked_dataset
from kcap.data.normalization import channel_statistics
from kcap.data.pipeline import (
    evaluation_dataset, images_per_epoch_steps, self_critical_dataset, steps_per_epoch, training_dataset,
)
from kcap.model.cider_reward import CiderReward
from kcap.text.tokenize import tokenize
from kcap.text.vocabulary import END_ID, SPECIAL_TOKENS, Vocabulary
from kcap.training.config import TrainConfig
from kcap.training.run_dir import RunDir
from kcap.training.validation_captioning import ValidationCaptioning, subset

if TYPE_CHECKING:
    from kcap.model.captioner import Captioner

log = logging.getLogger("kcap")


@dataclasses.dataclass
class RunData:
    """What a run, or every trial of a search, trains on.

    `normalization` holds the training images' `mean` and `std` (for
    `normalize="dataset"`); `feature_cache` and `cache_stats` (how it was
    built: `FeatureCache.build`'s statistics) are set by `with_feature_cache`.
    For `training_objective="cider"`, `reward` is the CIDEr-D of the training split's
    references and `references` their vectors, a row per training image.
    """

    dataset: CaptionDataset
    vocabulary: Vocabulary
    normalization: dict | None = None
    feature_cache: FeatureCache | None = None
    cache_stats: dict | None = None
    reward: CiderReward | None = None
    references: dict | None = None

    @property
    def train_images(self) -> list[CaptionedImage]:
        return self.dataset.subset("train")

    @property
    def val_images(self) -> list[CaptionedImage]:
        return self.dataset.subset("val")


def prepare_data(config: TrainConfig, run: RunDir | None = None, skipped: dict | None = None) -> RunData:
    """The split data set, the vocabulary and (for `normalize="dataset"`) the channel statistics.

    A run being resumed keeps the vocabulary and statistics it started with;
    a run `--init-from` another takes that run's (and its splits).
    The data check runs first (`kcap.data.check`): with `on_bad_image="error"`
    any bad image or caption row stops here; with `"skip"` they are left out
    and, when `skipped` is a dict, listed in it (`{"images": [...], "rows": [...]}`).
    """
    # Data check (issue #8): every problem is reported before any training.
    # A run's own files first; a run started --init-from another has that run's until it writes its own.
    runs = [r for r in (run, RunDir(config.init_from) if config.init_from else None) if r is not None]
    resumed_splits = next((r.splits for r in runs if r.splits.is_file()), None)
    dataset, report = load_checked_dataset(config.data_settings(), run_splits=resumed_splits)
    if skipped is not None:
        skipped.update(report.skipped_json())
        # Images a resumed run keeps out as it did when it began (no split): recorded again.
        recorded = {item["path"] for item in skipped["images"]}
        skipped["images"] += [
            {"path": str(image.path), "reason": "left out when the run began (--on-bad-image skip)."}
            for image in dataset.images if image.split is None and str(image.path) not in recorded
        ]
    train_images = dataset.subset("train")
    if not train_images:
        raise ValueError(f"No training images in {dataset.source}.")
    vocabulary_file = next((r.vocabulary for r in runs if r.vocabulary.is_file()), None)
    if vocabulary_file is not None:
        vocabulary = Vocabulary.load(vocabulary_file)
    else:
        vocabulary = Vocabulary.build(
            (c for image in train_images for c in image.captions),
            max_words=config.vocab_size,
            max_length=config.max_length,
            min_count=config.min_word_count,
        )
        if len(vocabulary) == len(SPECIAL_TOKENS):
            raise ValueError(
                f"No word of the training captions appears {config.min_word_count} times or more, so the "
                "vocabulary would hold no words; lower --min-word-count."
            )
    normalization = None
    if config.normalize == "dataset":
        normalization = next((r.read_config().get("normalization") for r in runs if r.config.is_file()), None)
        if not normalization:
            mean, std = channel_statistics([str(i.path) for i in train_images], (config.image_size,) * 2)
            normalization = {"mean": mean, "std": std}
    data = RunData(dataset, vocabulary, normalization)
    if config.training_objective == "cider":
        references = [[reference_ids(c, vocabulary) for c in image.captions] for image in train_images]
        reward = CiderReward(references, len(vocabulary))
        vectors = reward.reference_vectors(references)
        if config.scst_cross_entropy:
            vectors["captions"] = reference_captions(train_images, vocabulary)
        data = dataclasses.replace(data, reward=reward, references=vectors)
    return data


def reference_captions(images: Sequence[CaptionedImage], vocabulary: Vocabulary) -> np.ndarray:
    """Each image's captions as the cross-entropy reads them: int32 (images, references, max_length + 2)
    padded token ids, rows of padding where an image has fewer captions than the most."""
    most = max(len(image.captions) for image in images)
    out = np.zeros((len(images), most, vocabulary.max_length + 2), np.int32)
    for i, image in enumerate(images):
        for r, caption in enumerate(image.captions):
            out[i, r] = vocabulary.encode(caption, pad=True)
    return out


def reference_ids(caption: str, vocabulary: Vocabulary) -> list[int]:
    """A reference caption as CIDEr-D rewards read it: the ids of all its words (no `max_length` cut), and `<end>`."""
    return [vocabulary.word_id(word) for word in tokenize(caption)] + [END_ID]


# -- the feature cache ----------------------------------------------------------


def cached_images(dataset: CaptionDataset) -> list[str]:
    """The images a feature cache holds: every image with a split, in file order."""
    return [str(i.path) for i in dataset.images if i.split is not None]


def build_feature_cache(
    config: TrainConfig, model: Captioner, dataset: CaptionDataset, progress: bool = True
) -> tuple[FeatureCache, dict]:
    """Finds (or builds, or finishes building) the feature cache for this model and data."""
    if config.backbone_weights == "none":
        log.warning(
            "The %s backbone starts from random weights (--backbone-weights none) and stays so: "
            "--cache-features freezes it, and the decoder learns from an untrained CNN's features. "
            "Give pretrained weights, or drop --cache-features to train the backbone with the decoder.",
            config.backbone,
        )
    cache = FeatureCache.for_model(model, cached_images(dataset), config.cache_dir)
    with explain_decode_failures(cache.image_paths, config.on_bad_image):
        stats = cache.build(model, batch_size=config.batch_size, progress=progress)
    if stats["reused"]:
        log.info("Reusing the feature cache %s.", cache.directory)
    else:
        log.info(
            "Cached features of %d images in %.1f s (%.1f images/s): %s, %.1f MiB.",
            stats["computed"], stats["seconds"], stats["images_per_s"] or 0, cache.directory, cache.size_bytes / 2**20,
        )
    return cache, stats


def wait_for_feature_cache(
    config: TrainConfig, model: Captioner, dataset: CaptionDataset, timeout_s: float = 3600.0
) -> tuple[FeatureCache, dict]:
    """The feature cache another process (the chief) is building, once it is complete."""
    cache = FeatureCache.for_model(model, cached_images(dataset), config.cache_dir)
    deadline = time.monotonic() + timeout_s
    while not cache.is_complete():
        if time.monotonic() > deadline:
            raise TimeoutError(f"The chief did not finish the feature cache {cache.directory} in {timeout_s:.0f} s.")
        time.sleep(2)
    return cache, {"computed": 0, "seconds": 0.0, "images_per_s": None, "reused": True}


def with_feature_cache(
    data: RunData, config: TrainConfig, model: Captioner, build: bool = True, progress: bool = True
) -> RunData:
    """`data` with the feature cache of `model`'s backbone, from which training then reads.

    The cache is built here (or reused, or finished), or with `build=False`
    (a worker other than the chief, on a shared file system) awaited from
    the process that builds it.
    """
    if build:
        cache, stats = build_feature_cache(config, model, data.dataset, progress=progress)
    else:
        cache, stats = wait_for_feature_cache(config, model, data.dataset)
    return dataclasses.replace(data, feature_cache=cache, cache_stats=stats)


# -- what model.fit gets ------------------------------------------------------------


def fit_arguments(config: TrainConfig, data: RunData, epochs: int | None = None, initial_epoch: int = 0) -> dict[str, Any]:
    """`model.fit`'s data arguments for epochs `initial_epoch` to `epochs` (`config.epochs` if `None`).

    `x` (the training batches of exactly those epochs, `kcap.data.pipeline.training_dataset`),
    `validation_data` (`None` without validation images), `epochs`, `initial_epoch`,
    `steps_per_epoch` and `shuffle=False`. Both read the feature cache when `data` has one.
    """
    epochs = config.epochs if epochs is None else epochs
    train_images, val_images = data.train_images, data.val_images
    image_size = (config.image_size, config.image_size)
    if config.training_objective == "cider":
        train_ds = self_critical_dataset(
            train_images, data.references, image_size, config.batch_size, config.seed, epochs, initial_epoch,
            feature_cache=data.feature_cache,
        )
    else:
        train_ds = training_dataset(
            train_images, data.vocabulary, image_size, config.batch_size, config.seed, epochs, initial_epoch,
            feature_cache=data.feature_cache, length_pool=config.length_pool,
        )
    val_ds = (
        evaluation_dataset(val_images, data.vocabulary, image_size, config.batch_size, feature_cache=data.feature_cache)
        if val_images else None
    )
    return {
        "x": train_ds,
        "validation_data": val_ds,
        "epochs": epochs,
        "initial_epoch": initial_epoch,
        "steps_per_epoch": training_steps(config, data),
        "shuffle": False,  # the dataset shuffles, by (seed, epoch)
    }


def training_steps(config: TrainConfig, data: RunData) -> int:
    """Training batches per epoch: of captions, or of images for `training_objective="cider"`."""
    if config.training_objective == "cider":
        return images_per_epoch_steps(data.train_images, config.batch_size)
    return steps_per_epoch(data.train_images, config.batch_size)


def validation_captioning(
    config: TrainConfig,
    data: RunData,
    count: int | None = None,
    log_dir: str | Path | None = None,
    num_examples: int = 4,
) -> ValidationCaptioning:
    """The callback that captions validation images at each epoch's end, from the feature cache when `data` has one.

    `count` validation images, spread evenly over them (`subset`), or all of
    them when `None`. With `log_dir`, the first `num_examples` go to TensorBoard.
    Keras calls callbacks in list order: put it before every callback that
    reads `val_bleu4` or `val_cider`.
    """
    val_images = data.val_images
    chosen = val_images if count is None else [val_images[i] for i in subset(val_images, count)]
    paths, references = [str(i.path) for i in chosen], [i.captions for i in chosen]
    options = dict(batch_size=config.batch_size, log_dir=log_dir, num_examples=num_examples)
    return ValidationCaptioning.from_files(
        paths, references, data.vocabulary, (config.image_size,) * 2, feature_cache=data.feature_cache, **options
    )
