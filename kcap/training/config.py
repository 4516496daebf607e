"""Every setting of a training run, saved as `config.json` and validated on load."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from kcap.data.loading import ON_BAD_IMAGE, SYNTHETIC, DataSettings
from kcap.data.splits import TEST_FRACTION, VAL_FRACTION

# tf.distribute strategies `--strategy` names (`kcap.training.distribute.make_strategy`).
STRATEGIES = ("default", "mirrored", "multi-worker", "tpu")

MIXED_PRECISION = ("off", "mixed_float16", "mixed_bfloat16")
# What `--monitor` may watch: the loss, or a score of the validation captions
# (`kcap.training.validation_captioning`). Kept here, not there: that module imports Keras,
# and `kcap train --help` lists these without loading it.
MONITORS = ("val_loss", "val_bleu4", "val_cider")
# The learning rate over a run: `learning_rate` throughout, or a cosine decay after an optional
# linear warm-up (`kcap.training.trainer.learning_rate_schedule`).
LR_SCHEDULES = ("constant", "cosine")
# Pixel normalisation: the backbone's own preprocessing, or the training images'
# per-channel mean and std (`kcap.data.normalization`).
NORMALIZE = ("backbone", "dataset")
# Batches per pool of like-length captions where the backbone is frozen (`TrainConfig.length_pool`).
LENGTH_POOL = 20
# What a run trains for: `kcap.model.captioner.OBJECTIVES`, `BASELINES` and `SCST_SAMPLERS`, named here so
# that `kcap train --help` lists them without loading Keras.
TRAINING_OBJECTIVES = ("cross_entropy", "cider")
SCST_BASELINES = ("mean", "greedy")
SCST_SAMPLERS = ("random", "beam")
# The settings a run started `--init-from` another takes from its own flags: the
# training's. Every other one (data, splits, model, backbone) is the other run's.
STAGE_SETTINGS = (
    "training_objective", "init_from", "samples_per_image", "scst_baseline", "scst_sampler", "sample_max_length",
    "scst_cross_entropy", "epochs", "batch_size", "length_pool", "learning_rate", "lr_schedule", "warmup_epochs",
    "clipnorm", "val_captions", "monitor", "early_stopping", "strategy", "mixed_precision", "on_bad_image",
    "full_decode",
)


@dataclasses.dataclass
class TrainConfig:
    """The whole configuration of a run. `kcap train` flags map one-to-one onto it."""

    data: str
    format: str = "auto"
    images: str | None = None
    synthetic_images: int = 3000
    synthetic_image_size: int = 96
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    length_pool: int | None = None  # batches per pool sorted by caption length (kcap.data.pipeline.epoch_order); None: see resolved()
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # one of LR_SCHEDULES; "cosine" decays to 0 by the last step
    warmup_epochs: float = 0.0  # --lr-schedule cosine: epochs (may be fractional) of linear warm-up from 0
    embedding_dim: int = 256
    units: int = 512
    decoder: str = "gru_attention"  # a registered decoder (kcap.model.decoders)
    decoder_layers: int = 2  # --decoder transformer: decoder layers
    decoder_heads: int = 4  # --decoder transformer: attention heads (embedding_dim must be a multiple)
    context_gate: bool = False  # --decoder gru_attention: Show-Attend-Tell's gating scalar beta on the context
    deep_output: bool = False  # --decoder gru_attention: Show-Attend-Tell's deep output layer (its eq. 7)
    label_smoothing: float = 0.0  # the cross-entropy's label smoothing (Captioner.compile)
    attention_regularizer: float = 0.0  # lambda of the doubly stochastic attention regulariser (Captioner.compile)
    dropout: float = 0.1
    vocab_size: int = 5000
    min_word_count: int = 1
    max_length: int | None = None
    backbone: str | None = None  # a name, or a .keras feature-extractor file; None: small_cnn for synthetic, else inception_v3
    backbone_weights: str | None = None  # None: "imagenet" where the backbone has it, else "none"
    image_size: int | None = None  # None: the backbone's own
    preprocessing: str | None = None  # None: the backbone's own
    train_backbone: bool | None = None  # None: only when the backbone starts from random weights
    fine_tune_layers: int = 0  # unfreeze the last N layers of a pretrained backbone
    normalize: str = "backbone"  # "backbone": its preprocess_input; "dataset": training-set mean/std
    cache_features: bool = False
    cache_dir: str | None = None  # None: $KCAP_CACHE_DIR/features or ~/.cache/kcap/features
    flip: bool = False
    zoom: float | None = None  # None: 0.05 on the synthetic set, 0.1 on real data
    translate: float | None = None
    brightness: float | None = None
    position_embedding: bool = True
    clipnorm: float | None = None
    strategy: str = "default"  # one of STRATEGIES
    mixed_precision: str = "off"  # "mixed_float16" (GPUs) or "mixed_bfloat16" (CPUs with AVX512-BF16/AMX, TPUs): training only
    on_bad_image: str = "error"  # data check (kcap.data.check): "error" stops before training, "skip" leaves bad images/rows out
    full_decode: bool = False  # data check: decode every image, not only its header and end (slower; finds damage inside)
    val_captions: int = 200  # validation images captioned each epoch for val_bleu4/val_cider (0: off)
    monitor: str = "val_loss"  # what picks the best checkpoint: val_loss, val_bleu4 or val_cider
    early_stopping: int | None = None  # stop after this many epochs without improvement
    training_objective: str = "cross_entropy"  # --objective, one of TRAINING_OBJECTIVES; "cider": self-critical training, from init_from
    init_from: str | None = None  # a finished run: its weights, vocabulary, splits and other settings (STAGE_SETTINGS aside)
    samples_per_image: int = 5  # --objective cider: captions sampled per image (K)
    scst_baseline: str = "mean"  # --objective cider: the other K-1 samples' "mean" reward, or the "greedy" caption's
    scst_sampler: str = "random"  # --objective cider: samples drawn at temperature 1, or a width-K beam's K best
    scst_cross_entropy: float = 0.1  # --objective cider: weight of the references' cross-entropy beside the reward
    sample_max_length: int | None = None  # --objective cider: most words per sample (None: the vocabulary's max_length)

    @property
    def is_synthetic(self) -> bool:
        return self.data == SYNTHETIC

    def data_settings(self) -> DataSettings:
        """What `kcap.data.loading.load_checked_dataset` reads of this configuration."""
        return DataSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataSettings)})

    def resolved(self) -> "TrainConfig":
        """A copy with every `None` default replaced by its actual value."""
        from kcap.model.backbones import check_weights_file, get_backbone_spec, is_backbone_file

        c = self._from_initial_run() if self.init_from else dataclasses.replace(self)
        if not c.data.strip():
            raise ValueError("Invalid configuration: data is empty; give 'synthetic', a caption file or a folder.")
        if c.backbone is None:
            c.backbone = "small_cnn" if c.is_synthetic else "inception_v3"
        # Files by absolute path: the run reads them again from wherever it is resumed or evaluated,
        # and two spellings of one file are one setting.
        if not c.is_synthetic:
            c.data = _absolute(c.data)
        c.images, c.cache_dir = _absolute(c.images), _absolute(c.cache_dir)
        if is_backbone_file(c.backbone):
            c.backbone = _absolute(c.backbone)
        if c.backbone_weights not in (None, "imagenet", "none", "file"):
            c.backbone_weights = _absolute(c.backbone_weights)
            check_weights_file(c.backbone_weights)  # now, not after the data check
        spec = get_backbone_spec(c.backbone, c.image_size)
        if c.backbone_weights is None:
            if is_backbone_file(c.backbone):
                c.backbone_weights = "file"
            else:
                c.backbone_weights = "imagenet" if spec.pretrained else "none"
        if c.image_size is None:
            c.image_size = c.synthetic_image_size if (c.is_synthetic and c.backbone == "small_cnn") else spec.image_size
        if c.preprocessing is None:
            c.preprocessing = spec.preprocessing
        if c.train_backbone is None:
            c.train_backbone = c.backbone_weights == "none" and not c.cache_features
        if c.length_pool is None:
            # Like-length captions are like scenes too (on the synthetic set, one shape or two), and
            # a backbone in training normalises its batch norm by each batch's statistics: such
            # batches trained it far worse there. A frozen backbone's features do not depend on the batch.
            c.length_pool = 1 if c.train_backbone else LENGTH_POOL
        if c.cache_features:
            # Augmentation needs pixels; cached features have none.
            asked = [
                name for name, value in (("flip", c.flip), ("zoom", c.zoom), ("translate", c.translate), ("brightness", c.brightness))
                if value
            ]
            if asked:
                raise ValueError(
                    f"Augmentation ({', '.join(asked)}) needs pixels, but --cache-features feeds the model "
                    "cached backbone features. Drop the augmentation flags (or, for kcap train, --cache-features)."
                )
            if c.train_backbone or c.fine_tune_layers:
                raise ValueError(
                    "--cache-features needs a frozen backbone (its features must not change); "
                    "drop --train-backbone / --fine-tune-layers, or --cache-features."
                )
            c.zoom = c.translate = c.brightness = 0.0
        if c.zoom is None:
            c.zoom = 0.05 if c.is_synthetic else 0.1
        if c.translate is None:
            c.translate = 0.05 if c.is_synthetic else 0.0
        if c.brightness is None:
            c.brightness = 0.1
        c.validate()
        return c

    def _from_initial_run(self) -> "TrainConfig":
        """The settings of the run `init_from` names, with this configuration's `STAGE_SETTINGS` over them.

        The cache folder is this one's where given: the cache itself is the run's, wherever it is kept.
        """
        source = Path(_absolute(self.init_from))
        if not (source / "config.json").is_file():
            raise ValueError(
                f"--init-from {self.init_from}: no kcap run there (no config.json); give the directory of a "
                "finished `kcap train` run."
            )
        base = TrainConfig.load(source / "config.json")
        data = self.data if self.is_synthetic else _absolute(self.data)
        if data != base.data:
            raise ValueError(
                f"--init-from {source} goes on from that run's data and splits ({base.data}), not {data}; "
                f"give --data {base.data}."
            )
        stage = {name: getattr(self, name) for name in STAGE_SETTINGS}
        stage.update(init_from=str(source), cache_dir=_absolute(self.cache_dir) or base.cache_dir)
        return dataclasses.replace(base, **stage)

    def validate(self) -> None:
        from kcap.model.decoders import decoder_names  # TensorFlow: imported only once a run is validated

        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.length_pool is None or self.length_pool >= 1, "length_pool must be at least 1"),
            (0 < self.learning_rate < math.inf, "learning_rate must be positive and finite"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be {_alternatives(LR_SCHEDULES)}"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs must be from 0 to below epochs"),
            (self.lr_schedule == "cosine" or not self.warmup_epochs, "warmup_epochs needs lr_schedule 'cosine'"),
            (self.embedding_dim >= 1 and self.units >= 1, "embedding_dim and units must be positive"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.decoder in decoder_names(), f"decoder must be one of {decoder_names()}"),
            (self.decoder_layers >= 1 and self.decoder_heads >= 1, "decoder_layers and decoder_heads must be at least 1"),
            (
                self.decoder != "transformer" or self.embedding_dim % max(self.decoder_heads, 1) == 0,
                "embedding_dim must be a multiple of decoder_heads for the transformer decoder",
            ),
            (
                self.decoder == "gru_attention" or not (self.context_gate or self.deep_output),
                "context_gate and deep_output are options of the gru_attention decoder",
            ),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.attention_regularizer < math.inf, "attention_regularizer must be 0 or more"),
            (self.vocab_size >= 1, "vocab_size must be at least 1"),
            (self.min_word_count >= 1, "min_word_count must be at least 1"),
            (0 <= self.seed < 2**32, "seed must be from 0 to 2**32 - 1"),
            (self.image_size is None or self.image_size >= 32, "image_size must be at least 32"),
            (self.clipnorm is None or self.clipnorm > 0, "clipnorm must be positive"),
            (self.val_captions >= 0, "val_captions must be 0 or more"),
            (self.max_length is None or self.max_length >= 1, "max_length must be at least 1"),
            (self.synthetic_images >= 10, "synthetic_images must be at least 10"),
            (self.fine_tune_layers >= 0, "fine_tune_layers must be 0 or more"),
            (self.normalize in NORMALIZE, f"normalize must be {_alternatives(NORMALIZE)}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
            (self.on_bad_image in ON_BAD_IMAGE, f"on_bad_image must be {_alternatives(ON_BAD_IMAGE)}"),
            (self.monitor in MONITORS, f"monitor must be {_alternatives(MONITORS)}"),
            (self.monitor == "val_loss" or self.val_captions > 0, "monitor val_bleu4/val_cider needs val_captions > 0"),
            (self.early_stopping is None or self.early_stopping >= 1, "early_stopping must be at least 1"),
            (self.training_objective in TRAINING_OBJECTIVES, f"training_objective must be {_alternatives(TRAINING_OBJECTIVES)}"),
            (
                self.training_objective == "cross_entropy" or self.init_from is not None,
                "training_objective 'cider' fine-tunes a trained captioner: give init_from (--init-from RUN), a finished "
                "cross-entropy run",
            ),
            (self.scst_baseline in SCST_BASELINES, f"scst_baseline must be {_alternatives(SCST_BASELINES)}"),
            (self.scst_sampler in SCST_SAMPLERS, f"scst_sampler must be {_alternatives(SCST_SAMPLERS)}"),
            (0.0 <= self.scst_cross_entropy < float("inf"), "scst_cross_entropy must be 0 or more"),
            (self.sample_max_length is None or self.sample_max_length >= 1, "sample_max_length must be at least 1"),
            (
                self.samples_per_image >= (2 if self.scst_baseline == "mean" else 1),
                "samples_per_image must be at least 2 with scst_baseline 'mean' (it averages the other samples), "
                "at least 1 with 'greedy'",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Invalid configuration: {message}.")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}.")
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            if not _matches(value, hints[name]):
                raise ValueError(f"{source}: key {name!r} should be {hints[name]}, got {value!r}.")
        missing = [
            name for name, f in fields.items()
            if name not in data and f.default is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}.")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
        if isinstance(data, dict) and "settings" not in data and "data" not in data:
            # Neither a run's config.json nor bare settings: some other program's file.
            raise ValueError(
                f"{path} is not a kcap configuration (no 'settings'); is {path.parent} a kcap run directory?"
            )
        return cls.from_json(data.get("settings", data) if isinstance(data, dict) else data, source=str(path))


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _alternatives(values: tuple[str, ...]) -> str:
    """`('a', 'b', 'c')` → `"'a', 'b' or 'c'"`."""
    return ", ".join(map(repr, values[:-1])) + f" or {values[-1]!r}"


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))
