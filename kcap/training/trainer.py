"""A training run from start (or from where it stopped) to the end."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import keras

import kcap
from kcap.data.decode_failures import explain_decode_failures
from kcap.data.dataset import SPLITS, CaptionDataset
from kcap.model.augmentation import ImageAugmentation
from kcap.model.backbones import build_backbone
from kcap.model.captioner import Captioner
from kcap.model.cider_reward import CiderReward
from kcap.model.model_files import load_keras_file
from kcap.model.preprocessing import ImagePreprocessing
from kcap.text.vocabulary import Vocabulary
from kcap.training.assembly import (
    RunData, fit_arguments, prepare_data, training_steps, validation_captioning, with_feature_cache,
)
from kcap.training.callbacks import (
    BestModelCheckpoint,
    HistoryLog,
    ResumableEarlyStopping,
    ResumeCheckpoint,
    VocabularyExport,
)
from kcap.training.config import TrainConfig
from kcap.training.distribute import make_strategy, writable_directory
from kcap.training.run_dir import RunDir, ensure_dirs
from kcap.utils.files import atomic_temporary_name, atomic_path, atomic_write_json, exclusive_use

log = logging.getLogger("kcap")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite and `TerminateOnNaN` stopped training; no final model is saved."""


# Settings that may change between a run and its resumption. The data and images may be
# moved or named otherwise: `restore_splits` then checks that they still hold the run's
# images and captions.
# A stricter data check (or skipping what it finds) leaves the splits of the others as they were.
RESUMABLE_CHANGES = ("epochs", "strategy", "data", "images", "format", "cache_dir", "on_bad_image", "full_decode")


def build_captioner(
    config: TrainConfig,
    vocabulary: Vocabulary,
    normalization: dict | None = None,
    steps_per_epoch: int | None = None,
    reward: CiderReward | None = None,
) -> Captioner:
    """The captioner a (resolved) configuration describes, compiled.

    `normalization` holds the training set's `mean` and `std` when
    `config.normalize == "dataset"`. `steps_per_epoch` (training batches per
    epoch) places `--lr-schedule cosine`'s warm-up and decay; a model built
    only to run its backbone (a feature cache) may leave it out. With
    `config.init_from` the weights are that run's best model's; `reward`
    (`RunData.reward`) is what `training_objective="cider"` trains for.
    """
    keras.utils.set_random_seed(config.seed)  # the same initial weights every time
    # Cached features are computed once and kept: in float32, whatever the training
    # policy, so that runs with and without mixed precision share one cache.
    with dtype_policy("off" if config.cache_features else config.mixed_precision):
        backbone = build_backbone(config.backbone, config.backbone_weights, config.image_size)
        if config.normalize == "dataset":
            if not normalization:
                raise ValueError("normalize='dataset' needs the training images' mean and std.")
            preprocessing = ImagePreprocessing("dataset", normalization["mean"], normalization["std"])
        else:
            preprocessing = ImagePreprocessing(config.preprocessing)
    with dtype_policy(config.mixed_precision):
        augmentation = ImageAugmentation(
            horizontal_flip=config.flip,
            zoom=config.zoom,
            translate=config.translate,
            brightness=config.brightness,
            seed=config.seed,
        )
        model = Captioner(
            backbone,
            vocabulary_size=len(vocabulary),
            max_length=vocabulary.max_length,
            image_size=(config.image_size, config.image_size),
            embedding_dim=config.embedding_dim,
            units=config.units,
            decoder=config.decoder,
            decoder_options=decoder_options(config),
            dropout=config.dropout,
            preprocessing=preprocessing,
            augmentation=augmentation,
            train_backbone=config.train_backbone,
            position_embedding=config.position_embedding,
            fine_tune_layers=config.fine_tune_layers,
        )
        optimizer = keras.optimizers.Adam(learning_rate_schedule(config, steps_per_epoch), clipnorm=config.clipnorm)
        # No XLA: the gradient of the teacher-forcing scan has a dynamic TensorArray
        # size, which XLA cannot compile, and Keras' "auto" would turn XLA on
        # wherever a GPU is visible. Under mixed_float16, compile() wraps the
        # optimizer in a LossScaleOptimizer, which train_step's scale_loss uses.
        objective = {}
        if config.training_objective != "cross_entropy":
            objective = dict(
                objective=config.training_objective, reward=reward, samples_per_image=config.samples_per_image,
                baseline=config.scst_baseline, sample_max_length=config.sample_max_length,
                sampler=config.scst_sampler, cross_entropy_weight=config.scst_cross_entropy,
            )
        model.compile(
            optimizer=optimizer, jit_compile=False,
            label_smoothing=config.label_smoothing, attention_regularizer=config.attention_regularizer, **objective,
        )
    if config.init_from:
        # The same architecture (the settings are the run's), so the weights match one to one;
        # not its optimizer's state: this run starts its own.
        source = RunDir(config.init_from).model_path("best")
        model.set_weights(load_keras_file(source, f"--init-from {config.init_from} needs a finished run.").get_weights())
    return model


def learning_rate_schedule(
    config: TrainConfig, steps_per_epoch: int | None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: `config.learning_rate`, or a schedule of the optimizer's step.

    `"cosine"`: a linear warm-up from 0 over `warmup_epochs`, then a cosine decay
    to 0 at the run's last step. The schedule reads the optimizer's iteration
    count, which the resume checkpoint restores, so a resumed run goes on where
    it stopped. Without `steps_per_epoch` (a model that will not train) it is
    the constant rate.

    Example:

    >>> schedule = learning_rate_schedule(TrainConfig("synthetic", epochs=2, lr_schedule="cosine", warmup_epochs=0.5), 10)
    >>> [round(float(schedule(step)), 6) for step in (0, 5, 10, 20)]
    [0.0, 0.001, 0.00075, 0.0]
    """
    if config.lr_schedule == "constant" or steps_per_epoch is None:
        return config.learning_rate
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    # Keras' decay_steps count after the warm-up: together they span the run.
    decay_steps = max(config.epochs * steps_per_epoch - warmup_steps, 1)
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, warmup_target=config.learning_rate, warmup_steps=warmup_steps
    )


def decoder_options(config: TrainConfig) -> dict | None:
    """The decoder's own constructor arguments from the config (its `TRAIN_OPTIONS`), or None if it has none.

    A switch that is off is left out: a decoder's switches default to off, and
    a model with none on is saved as before the switches existed.
    """
    from kcap.model.decoders import get_decoder

    fields = get_decoder(config.decoder).TRAIN_OPTIONS
    options = {argument: getattr(config, field) for argument, field in fields.items()}
    return {argument: value for argument, value in options.items() if value is not False} or None


@contextlib.contextmanager
def dtype_policy(mixed_precision: str) -> Iterator[None]:
    """Layers built inside compute in `mixed_precision` ("off": float32); the global policy is restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if mixed_precision == "off" else mixed_precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _check_resume(run: RunDir, config: TrainConfig) -> None:
    # resolved(): a config.json from before paths were stored absolute reads its relative ones from here.
    saved = TrainConfig.load(run.config).resolved()
    # A cosine schedule is laid over the run's epochs: another --epochs would move the rate mid-run.
    resumable = [key for key in RESUMABLE_CHANGES if not (key == "epochs" and saved.lr_schedule == "cosine")]
    changed = [
        key for key, value in dataclasses.asdict(saved).items()
        if key not in resumable and getattr(config, key) != value
    ]
    if changed:
        details = ", ".join(f"{k}: {getattr(saved, k)!r} → {getattr(config, k)!r}" for k in changed)
        raise ValueError(
            f"{run.path} holds a run with other settings ({details}). Re-run with the same "
            f"settings to resume it, or choose a new --run-dir."
        )
    _check_resume_checkpoint_is_there(run)


def _check_resume_checkpoint_is_there(run: RunDir) -> None:
    """Without `resume.json` a run starts again at epoch 1, which is right only if it never finished one."""
    if run.resume_state.is_file():
        return
    finished = max((e["epoch"] for e in HistoryLog.load(run.history, math.inf)), default=0)
    # The history is written before the checkpoint: a run killed between the two in its
    # first epoch has epoch 1 in its history and no checkpoint yet, and rightly starts again.
    if finished > 1 or run.final_model.is_file():
        raise ValueError(
            f"{run.path} has finished epochs ({run.history} lists {finished}"
            f"{', and model.keras is there' if run.final_model.is_file() else ''}), but its resume checkpoint "
            f"{run.resume_state} is missing, so it cannot go on from where it stopped; training it again from "
            f"epoch 1 would overwrite its history and models. Put {run.checkpoints} back (from a backup), "
            "or choose a new --run-dir."
        )


def _warn_about_flip(config: TrainConfig, dataset: CaptionDataset) -> None:
    if not config.flip:
        return
    sided = sum(
        1 for image in dataset.subset("train") for c in image.captions
        if " left" in f" {c.lower()}" or " right" in f" {c.lower()}"
    )
    if config.is_synthetic or sided:
        message = (
            f"Horizontal flips contradict {sided} training captions that say 'left' or 'right'."
        )
        if config.is_synthetic:
            raise ValueError(message + " The synthetic set's captions depend on sides; drop --flip.")
        log.warning(message)


def train(config: TrainConfig, run_dir: str | Path, verbose: int | str = "auto") -> dict:
    """Trains (or resumes) the run in `run_dir`; returns its history entries.

    Under `--strategy multi-worker` every worker runs this; only the chief
    writes into `run_dir`, the others write into a temporary folder that is
    removed at the end (`kcap.training.distribute.writable_directory`).
    """
    config = config.resolved()
    strategy = make_strategy(config.strategy)  # before any other TF op (multi-worker needs that)
    with writable_directory(run_dir, strategy) as write_dir:
        run = RunDir(write_dir)
        created = not run.path.exists()
        run.check_writable()
        try:
            with exclusive_use(run.path, "kcap process (two runs would write the same checkpoints)"):
                return _train(config, RunDir(Path(run_dir)), run, strategy, verbose)
        except BaseException:
            if created:
                _remove_if_empty(run)  # a run refused at the start leaves no folder behind
            raise


def _train(config: TrainConfig, source: RunDir, run: RunDir, strategy, verbose) -> dict:
    """`source` is the run directory read to resume; `run` is where this process writes."""
    resuming = source.exists()
    if resuming:
        _check_resume(source, config)
    else:
        _check_new_run_folder(run)
    _remove_partial_files(run)

    skipped: dict = {}  # what the data check left out (--on-bad-image skip), for config.json
    data = prepare_data(config, source if resuming else None, skipped)
    _check_data(config, data.dataset)
    if config.training_objective == "cider" and config.monitor == "val_loss":
        log.warning(
            "--objective cider with --monitor val_loss: best.keras follows the cross-entropy, which self-critical "
            "training does not lower. --monitor val_cider keeps the epoch with the best CIDEr-D."
        )
    with strategy.scope():
        model = build_captioner(config, data.vocabulary, data.normalization, training_steps(config, data), data.reward)
    if config.cache_features:
        # Another worker waits for the chief, which builds the cache on the shared file system.
        data = with_feature_cache(data, config, model, build=run.path == source.path)

    with strategy.scope():
        initial_epoch = ResumeCheckpoint.restore(model, source.resume_state)
    previous = HistoryLog.load(source.history, initial_epoch)
    if initial_epoch:
        log.info("Resuming %s after epoch %d of %d.", source.path, initial_epoch, config.epochs)
    stopped_early = ResumeCheckpoint.stopped_early(source.resume_state)
    finished = initial_epoch >= config.epochs or stopped_early
    if not (finished and source.final_model.is_file()):
        # Before any checkpoint, so every checkpoint has its settings and data beside it;
        # left as they are for a finished run, whose config.json says how it was trained.
        _write_run_files(config, run, data, skipped)
    if finished:
        _finish_finished_run(model, source, run, initial_epoch, stopped_early)
        return {"epochs": previous}

    arguments = fit_arguments(config, data, config.epochs, initial_epoch)
    callbacks = _callbacks(config, run, data, previous)
    with explain_decode_failures(data.train_images + data.val_images, config.on_bad_image):
        fitted = model.fit(**arguments, callbacks=callbacks, verbose=verbose)
    _check_not_diverged(fitted, run, initial_epoch)
    with atomic_path(run.final_model) as tmp:
        model.save(tmp)
    return json.loads(run.history.read_text())


def _remove_if_empty(run: RunDir) -> None:
    for folder in (run.checkpoints, run.logs, run.path):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds on an empty folder


def _remove_partial_files(run: RunDir) -> None:
    """Deletes the temporary files a killed run left beside its real ones (issue #8).

    `atomic_path` writes `.<stem>.kcap-tmp-<random><suffix>` and renames it into place; a
    process killed mid-write leaves that temporary behind (the real file is
    intact). Only names of exactly that form, for the files a run writes, are removed.
    """
    for folder, names in ((run.path, RunDir.FILES), (run.checkpoints, RunDir.CHECKPOINT_FILES)):
        patterns = [atomic_temporary_name(name) for name in names]
        for path in folder.glob(".*"):
            if path.is_file() and any(pattern.match(path.name) for pattern in patterns):
                path.unlink(missing_ok=True)


def _check_new_run_folder(run: RunDir) -> None:
    """A new run goes into a new or empty folder, or one a run killed before its config.json left.

    Such a run has written its (empty) `checkpoints/` and `logs/` and perhaps `splits.json`:
    anything else is someone else's, and a run would overwrite or delete it.
    """
    temporaries = [atomic_temporary_name(name) for name in ("splits.json", "config.json")]
    others = sorted(
        path.name for path in run.path.iterdir()
        if not (path.name in (run.checkpoints.name, run.logs.name) and path.is_dir() and not any(path.iterdir()))
        and path.name != run.splits.name
        and not any(pattern.match(path.name) for pattern in temporaries)
    )
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ValueError(
            f"{run.path} is not empty ({shown}) and holds no kcap run (no config.json); a run writes and "
            "cleans up files there. Choose a new or empty --run-dir."
        )


def _check_monitor_without_validation(config: TrainConfig, source: str) -> None:
    """With no validation images the monitored value can only be the training loss."""
    if config.monitor != "val_loss":
        raise ValueError(
            f"--monitor {config.monitor} needs validation images, and {source} leaves none "
            f"(--val-fraction {config.val_fraction:g}, or split lists without a val split). "
            f"Give --val-fraction above 0, or --monitor val_loss."
        )
    followers = "best.keras and early stopping follow" if config.early_stopping else "best.keras follows"
    log.warning("No validation images: %s the training loss.", followers)


def _check_cider_has_images_to_compare(config: TrainConfig, val_images: list) -> None:
    """CIDEr-D over one image is 0 whatever the caption, so it cannot pick a checkpoint."""
    captioned = min(config.val_captions, len(val_images))
    if config.monitor == "val_cider" and captioned < 2:
        raise ValueError(
            f"--monitor val_cider needs at least 2 validation images captioned each epoch, and this run "
            f"captions {captioned} (--val-captions {config.val_captions}, {len(val_images)} validation images). "
            "CIDEr-D weighs each n-gram by how few images' references share it, so over one image every "
            "weight is 0 and val_cider is 0 every epoch. Caption more images, or --monitor val_bleu4 or val_loss."
        )


def _write_run_files(config: TrainConfig, run: RunDir, data: RunData, skipped: dict) -> None:
    """`splits.json` and `config.json`: the data, every setting, and what was derived from them."""
    dataset = data.dataset
    ensure_dirs(run)
    atomic_write_json(run.splits, dataset.to_manifest())
    run_config = {
        "kcap_version": kcap.__version__,
        "settings": config.to_json(),
        "data": {
            "source": dataset.source,
            "images": dataset.split_sizes(),
            "excluded_images": len(dataset.excluded),
            "skipped": skipped,
            "captions": {s: sum(len(i.captions) for i in dataset.subset(s)) for s in SPLITS},
        },
        "vocabulary": {"size": len(data.vocabulary), "max_length": data.vocabulary.max_length},
        "normalization": data.normalization,
    }
    if data.feature_cache is not None:
        cache = data.feature_cache
        run_config["feature_cache"] = {"path": str(cache.directory), "size_bytes": cache.size_bytes, **data.cache_stats}
    atomic_write_json(run.config, run_config)


def _check_data(config: TrainConfig, dataset: CaptionDataset) -> None:
    """What these settings need of the data: no flips over sided captions, validation images for the monitor."""
    _warn_about_flip(config, dataset)
    val_images = dataset.subset("val")
    if not val_images:
        _check_monitor_without_validation(config, dataset.source)
    else:
        _check_cider_has_images_to_compare(config, val_images)


def _finish_finished_run(model: Captioner, source: RunDir, run: RunDir, epochs: int, stopped_early: bool) -> None:
    """A run with no epoch left to train: its final model is saved if it is missing, and the user told why."""
    if not source.final_model.is_file():
        # Killed while saving it (or ended at a lower --epochs): the resume checkpoint holds the same weights.
        with atomic_path(run.final_model) as tmp:
            model.save(tmp)
        log.info("Saved %s, which the run had not finished writing.", run.final_model)
    if stopped_early:
        log.info(
            "%s already finished (%d epochs): early stopping ended it, and a larger --epochs does not "
            "train it on. Choose a new --run-dir to train longer.", source.path, epochs,
        )
    else:
        log.info("%s already finished (%d epochs).", source.path, epochs)


def _callbacks(config: TrainConfig, run: RunDir, data: RunData, previous: list[dict]) -> list[keras.callbacks.Callback]:
    """The run's callbacks, in the order Keras calls them at the end of each epoch."""
    val_images = data.val_images
    monitor = config.monitor if val_images else "loss"
    mode = "min" if monitor.endswith("loss") else "max"
    seen = [e[monitor] for e in previous if monitor in e]
    best = (min(seen) if mode == "min" else max(seen)) if seen else None
    callbacks = [VocabularyExport(data.vocabulary, run.vocabulary), keras.callbacks.TerminateOnNaN()]
    if val_images and config.val_captions:
        # Before the checkpoint and history callbacks: it adds val_bleu4/val_cider to their logs.
        # On every worker (another writes its pictures to a scratch folder): all must stop alike.
        callbacks.append(validation_captioning(config, data, config.val_captions, log_dir=run.logs / "captions"))
    callbacks.append(BestModelCheckpoint(run.best_model, monitor=monitor, mode=mode, best=best))
    if config.early_stopping:
        # Before ResumeCheckpoint, which records whether it stopped the run.
        callbacks.append(ResumableEarlyStopping(seen, monitor=monitor, mode=mode, patience=config.early_stopping))
    return callbacks + [
        # History before the resume checkpoint (issue #8): a run killed between the two
        # redoes the epoch; the other way round it would skip the epoch's history entry.
        HistoryLog(run.history, previous),
        ResumeCheckpoint(run.resume_state),
        keras.callbacks.TensorBoard(log_dir=str(run.logs)),
    ]


def _check_not_diverged(fitted: keras.callbacks.History, run: RunDir, initial_epoch: int) -> None:
    """NaN guard (issue #8): `TerminateOnNaN` ends `fit` quietly; saving now would ship NaN weights."""
    losses = fitted.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"Training stopped in epoch {initial_epoch + len(losses)}: the loss became {losses[-1]}. "
            f"{run.path} keeps the checkpoints of the epochs before it (none were written for this one). "
            "Start a new --run-dir with a lower --learning-rate, or with --clipnorm (e.g. 1.0)."
        )
