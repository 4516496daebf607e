"""`kcap train`'s flags, one per `TrainConfig` setting: also `kcap features`' and `kcap tune`'s.

Example:

```python
parser = argparse.ArgumentParser(prog="kcap train")
add_train_arguments(parser)
config = train_config(parser.parse_args(["--data", "synthetic", "--epochs", "3"]))
config.epochs                  # 3; every other setting is TrainConfig's default
```

Building the parser imports neither TensorFlow nor Keras: `kcap --help` stays quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from kcap.data.caption_files import caption_formats
from kcap.data.loading import ON_BAD_IMAGE
from kcap.training.config import (
    LR_SCHEDULES, MIXED_PRECISION, MONITORS, NORMALIZE, SCST_BASELINES, SCST_SAMPLERS, STRATEGIES, TRAINING_OBJECTIVES,
    TrainConfig,
)
from kcap.training.hparams import apply_hparams


def positive_int(text: str) -> int:
    """An argparse `type`: an integer of 1 or more, else a usage error."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse `type`: an integer of 0 or more, else a usage error."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse `type`: a finite number above 0, else a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def preprocessing_mode(text: str) -> str:
    """An argparse `type`: a backbone preprocessing mode of `kcap.model.preprocessing.MODES`.

    `"dataset"` is not one: `--normalize dataset` chooses it. Checked when the
    flag is given, not in `choices`: the modes live beside the Keras layer that
    applies them, and `--help` should not load Keras.
    """
    from kcap.model.preprocessing import MODES

    modes = [mode for mode in MODES if mode != "dataset"]
    if text not in modes:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(modes)}, got {text!r}")
    return text


def add_train_arguments(p: argparse.ArgumentParser, objective_flags: tuple[str, ...] = ("--objective", "--training-objective")) -> None:
    """Adds a flag for every `TrainConfig` setting (but `position_embedding`), with its default.

    `objective_flags` name `training_objective`'s: `kcap tune` has an `--objective` of its own.
    """
    d = TrainConfig(data="")
    p.add_argument("--data", required=True, help="'synthetic' (the embedded set) or a caption file / folder")
    p.add_argument("--images", default=None, help="images folder (default: Images/ or images/ beside the caption file)")
    p.add_argument("--format", default=d.format, choices=caption_formats(), help="caption file format (default: detected)")
    p.add_argument("--synthetic-images", type=int, default=d.synthetic_images, help="images in the synthetic set")
    p.add_argument("--synthetic-image-size", type=int, default=d.synthetic_image_size, help="side of synthetic images (64-512)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="images for validation, without split lists")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="images for test, without split lists")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--length-pool", type=int, default=d.length_pool,
                   help="batches per pool sorted by caption length, so a batch spends few steps on padding; 1: random "
                        "batches (default: 20 with a frozen backbone, 1 when the backbone trains)")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help="'constant': --learning-rate throughout; 'cosine': a cosine decay from it to 0 by the last "
                        "step, after --warmup-epochs (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, metavar="EPOCHS",
                   help="with --lr-schedule cosine: epochs (0.5 is half of one) of linear warm-up from 0 to "
                        "--learning-rate (default: %(default)s)")
    p.add_argument("--embedding-dim", type=int, default=d.embedding_dim)
    p.add_argument("--units", type=int, default=d.units, help="GRU and attention units; the feed-forward size for --decoder transformer")
    p.add_argument("--decoder", default=d.decoder, help="a registered decoder (kcap.model.decoders; default: %(default)s)")
    p.add_argument("--decoder-layers", type=int, default=d.decoder_layers,
                   help="decoder layers, for --decoder transformer (default: %(default)s)")
    p.add_argument("--decoder-heads", type=int, default=d.decoder_heads,
                   help="attention heads, for --decoder transformer; --embedding-dim must be a multiple "
                        "(default: %(default)s)")
    p.add_argument("--context-gate", action=argparse.BooleanOptionalAction, default=d.context_gate,
                   help="Show-Attend-Tell's gating scalar on the attention context, for --decoder gru_attention")
    p.add_argument("--deep-output", action=argparse.BooleanOptionalAction, default=d.deep_output,
                   help="Show-Attend-Tell's deep output layer (logits from the word, state and context), "
                        "for --decoder gru_attention")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="EPS",
                   help="smooth the cross-entropy's targets by EPS (default: %(default)s, off)")
    p.add_argument("--attention-regularizer", type=float, default=d.attention_regularizer, metavar="LAMBDA",
                   help="add LAMBDA times Show-Attend-Tell's doubly stochastic attention penalty to the loss; "
                        "the paper uses 1 (default: %(default)s, off)")
    p.add_argument(*objective_flags, dest="training_objective", default=d.training_objective, choices=TRAINING_OBJECTIVES,
                   help="'cross_entropy': teacher forcing on the captions; 'cider': self-critical training, which "
                        "rewards sampled captions with their CIDEr-D, from the run --init-from names "
                        "(default: %(default)s)")
    p.add_argument("--init-from", default=d.init_from, metavar="RUN",
                   help="start from this finished run's best model, vocabulary, splits, feature cache and settings; "
                        "only the training's flags (--objective, --epochs, --learning-rate, --batch-size, ...) are "
                        "this run's own")
    p.add_argument("--samples-per-image", type=positive_int, default=d.samples_per_image, metavar="K",
                   help="--objective cider: captions sampled per image and step (default: %(default)s)")
    p.add_argument("--scst-baseline", default=d.scst_baseline, choices=SCST_BASELINES,
                   help="--objective cider: a sample's reward is compared with the mean reward of the image's "
                        "other samples, or with its greedy caption's (default: %(default)s)")
    p.add_argument("--scst-sampler", default=d.scst_sampler, choices=SCST_SAMPLERS,
                   help="--objective cider: draw the K samples at temperature 1, or take the K best captions of a "
                        "beam search of width K (default: %(default)s)")
    p.add_argument("--scst-cross-entropy", type=float, default=d.scst_cross_entropy, metavar="W",
                   help="--objective cider: add W times the cross-entropy of the images' reference captions to the "
                        "loss, which keeps the model near human captions; 0: the reward alone, which on Flickr8k "
                        "drifted from them and collapsed (default: %(default)s)")
    p.add_argument("--sample-max-length", type=positive_int, default=d.sample_max_length, metavar="N",
                   help="--objective cider: end each sample after at most N words (default: the vocabulary's "
                        "max length)")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="keep this many most frequent words")
    p.add_argument("--min-word-count", type=int, default=d.min_word_count, help="words seen fewer times in training captions become <unk>")
    p.add_argument("--max-length", type=int, default=d.max_length, help="cap on caption words (default: longest training caption)")
    p.add_argument("--backbone", default=None, help="backbone name or PATH.keras feature extractor (default: small_cnn for synthetic data, inception_v3 otherwise)")
    p.add_argument("--backbone-weights", default=None, help="imagenet | none | PATH (default: imagenet where available)")
    p.add_argument("--image-size", type=int, default=None, help="side the backbone is fed (default: the backbone's own)")
    p.add_argument("--preprocessing", default=None, type=preprocessing_mode, metavar="MODE",
                   help="how pixels are scaled for the backbone: a mode of kcap.model.ImagePreprocessing "
                        "but 'dataset' (default: the backbone's own)")
    _bool_flag(p, "train-backbone", "train the backbone's weights (default: only when it starts from random weights)")
    p.add_argument("--fine-tune-layers", type=int, default=d.fine_tune_layers, help="unfreeze the last N layers (with weights) of a pretrained backbone")
    p.add_argument("--normalize", default=d.normalize, choices=NORMALIZE,
                   help="pixel normalisation: the backbone's preprocess_input, or the training images' per-channel mean/std")
    p.add_argument("--cache-features", action="store_true", help="run the frozen backbone once per image and train on cached features")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: $KCAP_CACHE_DIR/features or ~/.cache/kcap/features)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip, help="random horizontal flips (contradicts 'left'/'right' captions)")
    p.add_argument("--zoom", type=float, default=None, help="random zoom-in crop, fraction (default 0.05 synthetic / 0.1 real)")
    p.add_argument("--translate", type=float, default=None, help="random shift, fraction (default 0.05 synthetic / 0 real)")
    p.add_argument("--brightness", type=float, default=None, help="random brightness change, fraction (default 0.1)")
    p.add_argument("--strategy", default=d.strategy, choices=STRATEGIES,
                   help="tf.distribute strategy; --batch-size is the global batch")
    p.add_argument("--mixed-precision", default=d.mixed_precision, choices=MIXED_PRECISION,
                   help="compute in float16 (GPUs) or bfloat16 (TPUs, CPUs with AVX512-BF16 or AMX) while training; "
                        "weights, loss and the saved model stay float32")
    p.add_argument("--val-captions", type=int, default=d.val_captions, help="validation images captioned each epoch for val_bleu4/val_cider (0: off)")
    p.add_argument("--monitor", default=d.monitor, choices=MONITORS, help="what picks the best checkpoint")
    p.add_argument("--early-stopping", type=int, default=d.early_stopping, metavar="PATIENCE", help="stop after PATIENCE epochs without improvement")
    p.add_argument("--clipnorm", type=float, default=d.clipnorm, help="clip gradients to this global norm")
    p.add_argument("--on-bad-image", default=d.on_bad_image, choices=ON_BAD_IMAGE,
                   help="data check: 'error' stops before training on any bad image or caption row; 'skip' leaves them out")
    p.add_argument("--full-decode", action="store_true",
                   help="data check: decode every image in full, to find damage inside a file (slower)")


def _bool_flag(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """Adds `--NAME` / `--no-NAME`, `None` when neither is given (the setting's own default)."""
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction, default=None, help=help)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed `add_train_arguments` flags, with `args.hparams`' settings over them.

    Attributes of `args` that are no setting (`run_dir`, `verbose`, ...) are left out.
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if getattr(args, "hparams", None):
        config = apply_hparams(config, args.hparams)
    return config
