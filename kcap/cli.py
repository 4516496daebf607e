"""The `kcap` command line: data → train → caption → evaluate."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence

import kcap
from kcap.utils import count


def _bool_flag(parser, name: str, help: str) -> None:
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction, default=None, help=help)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-size", type=_positive_int, default=1, help="beam search with this many beams (1: greedy)")
    p.add_argument("--temperature", type=_positive_float, default=None, help="sample words at this temperature instead")


def _check_decoding_arguments(args: argparse.Namespace) -> None:
    """Refuses what `Captioner.generate` would, before the run is loaded and images are read."""
    if args.temperature is not None and args.beam_size > 1:
        raise ValueError("Choose --temperature (sampling) or --beam-size above 1 (beam search), not both.")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from kcap.data.caption_files import FORMATS
    from kcap.training.config import MIXED_PRECISION, STRATEGIES, TrainConfig

    d = TrainConfig(data="")
    p.add_argument("--data", required=True, help="'synthetic' (the embedded set) or a caption file / folder")
    p.add_argument("--images", default=None, help="images folder (default: Images/ or images/ beside the caption file)")
    p.add_argument("--format", default=d.format, choices=FORMATS, help="caption file format (default: detected)")
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
    p.add_argument("--embedding-dim", type=int, default=d.embedding_dim)
    p.add_argument("--units", type=int, default=d.units, help="GRU and attention units")
    p.add_argument("--decoder", default=d.decoder, help="a registered decoder (kcap.model.decoders; default: %(default)s)")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="keep this many most frequent words")
    p.add_argument("--min-word-count", type=int, default=d.min_word_count, help="words seen fewer times in training captions become <unk>")
    p.add_argument("--max-length", type=int, default=d.max_length, help="cap on caption words (default: longest training caption)")
    p.add_argument("--backbone", default=None, help="backbone name or PATH.keras feature extractor (default: small_cnn for synthetic data, inception_v3 otherwise)")
    p.add_argument("--backbone-weights", default=None, help="imagenet | none | PATH (default: imagenet where available)")
    p.add_argument("--image-size", type=int, default=None, help="side the backbone is fed (default: the backbone's own)")
    p.add_argument("--preprocessing", default=None, choices=["none", "scale", "tf", "torch", "caffe"], help="default: the backbone's own")
    _bool_flag(p, "train-backbone", "train the backbone's weights (default: only when it starts from random weights)")
    p.add_argument("--fine-tune-layers", type=int, default=d.fine_tune_layers, help="unfreeze the last N layers (with weights) of a pretrained backbone")
    p.add_argument("--normalize", default=d.normalize, choices=["backbone", "dataset"],
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
    p.add_argument("--monitor", default=d.monitor, choices=["val_loss", "val_bleu4", "val_cider"], help="what picks the best checkpoint")
    p.add_argument("--early-stopping", type=int, default=d.early_stopping, metavar="PATIENCE", help="stop after PATIENCE epochs without improvement")
    p.add_argument("--clipnorm", type=float, default=d.clipnorm, help="clip gradients to this global norm")
    p.add_argument("--on-bad-image", default=d.on_bad_image, choices=["error", "skip"],
                   help="data check: 'error' stops before training on any bad image or caption row; 'skip' leaves them out")
    p.add_argument("--full-decode", action="store_true",
                   help="data check: decode every image in full, to find damage inside a file (slower)")


def _train_config(args: argparse.Namespace):
    from kcap.training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if getattr(args, "hparams", None):
        from tuning.search import apply_hparams

        config = apply_hparams(config, args.hparams)
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from kcap.training.trainer import train

    history = train(_train_config(args), args.run_dir, verbose=args.verbose)
    last = history["epochs"][-1] if history["epochs"] else {}
    summary = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "epoch")
    print(f"Trained {count(len(history['epochs']), 'epoch')} ({summary}). Run directory: {args.run_dir}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from kcap.training.trainer import build_captioner, build_feature_cache, prepare_data

    config = dataclasses.replace(_train_config(args), cache_features=True).resolved()
    dataset, vocabulary, normalization = prepare_data(config)
    model = build_captioner(config, vocabulary, normalization)
    cache, stats = build_feature_cache(config, model, dataset)
    print(json.dumps({"cache": str(cache.directory), "images": len(cache.image_paths),
                      "size_bytes": cache.size_bytes, **stats}, indent=2))
    return 0


def cmd_preview_augmentation(args: argparse.Namespace) -> int:
    from kcap.model.augmentation import ImageAugmentation
    from kcap.model.augmentation_preview import preview_augmentation
    from kcap.model.preprocessing import ImagePreprocessing
    from kcap.training.config import TrainConfig
    from kcap.training.run_dir import RunDir

    normalization = None
    if args.run_dir:
        run = RunDir(args.run_dir)
        config = TrainConfig.load(run.config)
        normalization = run.read_config().get("normalization")
    else:
        config = _train_config(args).resolved()
    if config.normalize == "dataset" and normalization:
        preprocessing = ImagePreprocessing("dataset", normalization["mean"], normalization["std"])
    else:
        preprocessing = ImagePreprocessing(config.preprocessing)
    augmentation = ImageAugmentation(config.flip, config.zoom, config.translate, config.brightness, seed=args.seed)
    path = preview_augmentation(args.image, args.output, augmentation, preprocessing, (config.image_size,) * 2, args.count)
    print(f"Wrote {path}")
    return 0


def _tsv_field(text: str) -> str:
    """`text` as one field of a tab-separated line: backslash, tab and line breaks escaped (`\\t`, `\\n`).

    A file name's bytes that are not UTF-8 (`os.fsdecode` holds them as surrogates)
    are written `\\xNN`, so that the output stays UTF-8 text.
    """
    text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return re.sub("[\udc80-\udcff]", lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def cmd_caption(args: argparse.Namespace) -> int:
    from kcap.data.images import expand_image_paths
    from kcap.inference import load_run
    from kcap.utils.figures import check_figure_path

    _check_decoding_arguments(args)
    images = expand_image_paths(args.images)
    if args.attention_plot:
        check_figure_path(args.attention_plot)
        if len(images) != 1:
            raise ValueError("--attention-plot draws one image: give exactly one IMAGE.")
    trained = load_run(args.run_dir, args.checkpoint)
    results = trained.caption_files(
        images, batch_size=args.batch_size, beam_size=args.beam_size, temperature=args.temperature,
        progress=len(images) > args.batch_size,
    )
    for result in results:
        print(f"{_tsv_field(str(result['image']))}\t{result['caption']}")
    if args.attention_plot:
        from kcap.evaluation.attention_plot import image_pixels, plot_attention

        result = results[0]
        pixels = image_pixels(result["image"])
        words = result["caption"].split() or ["<end>"]
        plot_attention(pixels, words, result["attention"], trained.model.feature_shape, path=args.attention_plot)
        print(f"Wrote {args.attention_plot}", file=sys.stderr)  # stdout is the captions, often redirected
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kcap.evaluation.evaluate import evaluate_run
    from kcap.evaluation.metrics import METRIC_LABELS
    from kcap.training.run_dir import RunDir

    _check_decoding_arguments(args)
    report = evaluate_run(
        args.run_dir, args.split, args.batch_size, args.checkpoint,
        beam_size=args.beam_size, temperature=args.temperature, images_dir=args.images,
    )
    base = report["baseline"]

    def show(value):
        return "n/a" if value is None else f"{value:.4f}"

    decoding = f"beam {args.beam_size}" if args.beam_size > 1 else ("sampling" if args.temperature else "greedy")
    print(f"{args.split}: {report['num_images']} images, {report['distinct_captions']} distinct captions ({decoding})")
    for key, name in METRIC_LABELS.items():
        print(f"  {name:8s} {show(report[key])}   (image-blind baseline {show(base[key])})")
    if report.get("meteor_error"):
        print(f"  METEOR unavailable: {report['meteor_error']}")
    for item in report["captions"][: args.show]:
        print(f"  {item['image']}\n    kcap:      {item['caption']}\n    reference: {item['references'][0]}")
    run = RunDir(args.run_dir)
    print(f"Wrote {run.evaluation(args.split)} and {run.results(args.split)}")
    return 0


def cmd_data_synthetic(args: argparse.Namespace) -> int:
    from kcap.data.synthetic import write_synthetic_dataset

    path = write_synthetic_dataset(args.output, args.num_images, args.seed, args.image_size, force=args.force)
    print(f"Synthetic set: {count(args.num_images, 'image')} and their captions in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcap", description=kcap.__doc__)
    parser.add_argument("--version", action="version", version=f"kcap {kcap.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a captioner (re-run to resume)")
    p.add_argument("--run-dir", required=True, help="where checkpoints, logs and the vocabulary go; re-use it to resume")
    _add_train_arguments(p)
    p.add_argument("--hparams", default=None, help="JSON file of settings that override the flags (e.g. kcap tune's best_hyperparameters.json)")
    p.add_argument("--verbose", "-v", type=int, default=None, help="Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("features", help="build the feature cache ahead of training (train's flags but --run-dir, --verbose)")
    _add_train_arguments(p)
    p.add_argument("--hparams", default=None, help="JSON file of settings that override the flags, as for train")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("preview-augmentation", help="save original, normalised and augmented versions of an image")
    p.add_argument("image")
    p.add_argument("--output", required=True, help="figure to write (.png, .jpg, .pdf or .svg)")
    p.add_argument("--run-dir", default=None, help="take augmentation and normalisation from this run")
    p.add_argument("--count", type=_positive_int, default=6, help="augmented versions to draw")
    p.add_argument("--data", default="real", help=argparse.SUPPRESS)
    for flag, kind in (("--backbone", str), ("--image-size", int), ("--preprocessing", str),
                       ("--zoom", float), ("--translate", float), ("--brightness", float)):
        p.add_argument(flag, type=kind, default=None)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_preview_augmentation)

    p = sub.add_parser("caption", help="caption image files with a trained run")
    p.add_argument("--run-dir", required=True)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP, WebP), or folders of them")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    _add_decoding_arguments(p)
    p.add_argument("--attention-plot", metavar="OUT.png", default=None, help="save where the model looked for each word (one image; .png, .jpg, .pdf or .svg)")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("evaluate", help="score a trained run on a split (BLEU, METEOR, ROUGE-L, CIDEr-D)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    _add_decoding_arguments(p)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--show", type=int, default=3, help="print this many example captions")
    p.add_argument(
        "--images", default=None, metavar="DIR",
        help="the run's images folder, where it is now if it moved since training",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("data", help="data sets: check a caption file and its images, or generate the synthetic set")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data_sub.add_parser("synthetic", help="write the embedded synthetic set to disk")
    q.add_argument("--output", required=True, help="folder for images/ and captions.csv")
    q.add_argument("--num-images", type=_positive_int, default=3000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--image-size", type=int, default=96)
    q.add_argument("--force", action="store_true", help="replace an earlier synthetic set of other settings at --output")
    q.set_defaults(func=cmd_data_synthetic)
    from kcap.data.check import add_check_command; add_check_command(data_sub)  # noqa: E702
    from kcap.export.command import add_export_command; add_export_command(sub)  # noqa: E702
    from tuning.command import add_tune_command; add_tune_command(sub)  # noqa: E702
    return parser


def _expand_home(args: argparse.Namespace) -> None:
    """`~/x` → `/home/me/x` in every argument: a shell leaves `--run-dir=~/x` as it is."""
    for key, value in vars(args).items():
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, key, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, key, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _expand_home(args)
    if getattr(args, "verbose", 0) is None:
        args.verbose = "auto"
    logging.basicConfig(level=logging.INFO, format="kcap: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as error:
        if os.environ.get("KCAP_DEBUG"):
            raise
        print(f"kcap {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if os.environ.get("KCAP_DEBUG") or not type(error).__module__.startswith("tensorflow"):
            raise
        # A TensorFlow op failed (tf.errors.OpError): its message, without the graph dump.
        message = getattr(error, "message", str(error)).split("\n")[0]
        print(f"kcap {args.command}: error: {type(error).__name__}: {message} (KCAP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("KCAP_DEBUG"):
            raise
        print(f"kcap {args.command}: interrupted.{_how_to_go_on(args)}", file=sys.stderr)
        return 130  # the shell's code for a command ended by Ctrl-C


def _how_to_go_on(args: argparse.Namespace) -> str:
    """What the same command does when run again after a Ctrl-C, for the commands that resume."""
    if args.command == "train":
        return f" Run the same command again to resume {args.run_dir} after its last finished epoch."
    if args.command == "features":
        return " Run the same command again to go on with the feature cache where it stopped."
    if args.command == "tune":
        return f" Run the same command again to go on with the search in {args.directory}."
    return ""


if __name__ == "__main__":
    sys.exit(main())
