"""A training run from start (or from where it stopped) to the end."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import keras

import kcap
from kcap.data.dataset import CaptionDataset
from kcap.data.pipeline import evaluation_dataset, steps_per_epoch, training_dataset
from kcap.data.sources import load_dataset
from kcap.model.augmentation import ImageAugmentation
from kcap.model.backbones import build_backbone
from kcap.model.captioner import Captioner
from kcap.text.vocabulary import Vocabulary
from kcap.training.callbacks import BestModelCheckpoint, HistoryLog, ResumeCheckpoint, VocabularyExport
from kcap.training.config import TrainConfig
from kcap.training.run_dir import RunDir, ensure_dirs
from kcap.utils.files import atomic_path, atomic_write_json

log = logging.getLogger("kcap")

# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ("epochs",)


def build_captioner(config: TrainConfig, vocabulary: Vocabulary) -> Captioner:
    """The captioner a (resolved) configuration describes, compiled."""
    backbone = build_backbone(config.backbone, config.backbone_weights, config.image_size)
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
        dropout=config.dropout,
        preprocessing=config.preprocessing,
        augmentation=augmentation,
        train_backbone=config.train_backbone,
        position_embedding=config.position_embedding,
    )
    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=config.clipnorm)
    model.compile(optimizer=optimizer)
    return model


def _check_resume(run: RunDir, config: TrainConfig) -> None:
    saved = TrainConfig.load(run.config)
    changed = [
        key for key, value in dataclasses.asdict(saved).items()
        if key not in RESUMABLE_CHANGES and getattr(config, key) != value
    ]
    if changed:
        details = ", ".join(f"{k}: {getattr(saved, k)!r} → {getattr(config, k)!r}" for k in changed)
        raise ValueError(
            f"{run.path} holds a run with other settings ({details}). Re-run with the same "
            f"settings to resume it, or choose a new --run-dir."
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
    """Trains (or resumes) the run in `run_dir`; returns its history entries."""
    config = config.resolved()
    run = RunDir(Path(run_dir))
    run.check_writable()
    resuming = run.exists()
    if resuming:
        _check_resume(run, config)
    ensure_dirs(run)
    keras.utils.set_random_seed(config.seed)

    dataset = load_dataset(config)
    _warn_about_flip(config, dataset)
    train_images, val_images = dataset.subset("train"), dataset.subset("val")
    if not train_images:
        raise ValueError(f"No training images in {dataset.source}.")
    if resuming and run.vocabulary.is_file():
        vocabulary = Vocabulary.load(run.vocabulary)
    else:
        vocabulary = Vocabulary.build(
            (c for image in train_images for c in image.captions),
            max_words=config.vocab_size,
            max_length=config.max_length,
        )
    # The manifest and config are written before any checkpoint, so every
    # checkpoint has its settings and data beside it.
    atomic_write_json(run.splits, dataset.to_manifest())
    atomic_write_json(run.config, {
        "kcap_version": kcap.__version__,
        "settings": config.to_json(),
        "data": {
            "source": dataset.source,
            "images": dataset.split_sizes(),
            "captions": {s: sum(len(i.captions) for i in dataset.subset(s)) for s in ("train", "val", "test")},
        },
        "vocabulary": {"size": len(vocabulary), "max_length": vocabulary.max_length},
    })

    model = build_captioner(config, vocabulary)
    initial_epoch = ResumeCheckpoint.restore(model, run.resume_weights, run.resume_state)
    previous = HistoryLog.load(run.history, initial_epoch)
    if initial_epoch:
        log.info("Resuming %s after epoch %d of %d.", run.path, initial_epoch, config.epochs)
    if initial_epoch >= config.epochs:
        log.info("%s already finished its %d epochs.", run.path, config.epochs)
        return {"epochs": previous}

    image_size = (config.image_size, config.image_size)
    train_ds = training_dataset(
        train_images, vocabulary, image_size, config.batch_size, config.seed, config.epochs, initial_epoch
    )
    val_ds = evaluation_dataset(val_images, vocabulary, image_size, config.batch_size) if val_images else None
    val_losses = [e["val_loss"] for e in previous if "val_loss" in e]
    monitor = "val_loss" if val_ds is not None else "loss"
    callbacks = [
        VocabularyExport(vocabulary, run.vocabulary),
        keras.callbacks.TerminateOnNaN(),
        BestModelCheckpoint(run.best_model, monitor=monitor, best=min(val_losses) if val_losses else None),
        ResumeCheckpoint(run.resume_weights, run.resume_state),
        HistoryLog(run.history, previous),
        keras.callbacks.TensorBoard(log_dir=str(run.logs)),
    ]
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch(train_images, config.batch_size),
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the dataset shuffles, by (seed, epoch)
    )
    with atomic_path(run.final_model) as tmp:
        model.save(tmp)
    return json.loads(run.history.read_text())
