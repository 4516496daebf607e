"""`kcap train`, `kcap features` and `kcap preview-augmentation`: the commands that take train's flags."""

from __future__ import annotations

import argparse
import dataclasses
import json

from kcap.training.flags import add_train_arguments, positive_int, preprocessing_mode, train_config
from kcap.utils import count


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds `kcap train`, `kcap features` and `kcap preview-augmentation`."""
    p = subparsers.add_parser("train", help="train a captioner (re-run to resume)")
    p.add_argument("--run-dir", required=True, help="where checkpoints, logs and the vocabulary go; re-use it to resume")
    add_train_arguments(p)
    p.add_argument("--hparams", default=None, help="JSON file of settings that override the flags (e.g. kcap tune's best_hyperparameters.json)")
    p.add_argument("--verbose", "-v", type=int, default=None, help="Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("features", help="build the feature cache ahead of training (train's flags but --run-dir, --verbose)")
    add_train_arguments(p)
    p.add_argument("--hparams", default=None, help="JSON file of settings that override the flags, as for train")
    p.set_defaults(func=cmd_features)

    p = subparsers.add_parser("preview-augmentation", help="save original, normalised and augmented versions of an image")
    p.add_argument("image")
    p.add_argument("--output", required=True, help="figure to write (.png, .jpg, .pdf or .svg)")
    p.add_argument("--run-dir", default=None, help="take augmentation and normalisation from this run")
    p.add_argument("--count", type=positive_int, default=6, help="augmented versions to draw")
    p.add_argument("--data", default="real", help=argparse.SUPPRESS)
    for flag, kind in (("--backbone", str), ("--image-size", int), ("--preprocessing", preprocessing_mode),
                       ("--zoom", float), ("--translate", float), ("--brightness", float)):
        p.add_argument(flag, type=kind, default=None)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_preview_augmentation)


def cmd_train(args: argparse.Namespace) -> int:
    from kcap.training.trainer import train

    history = train(train_config(args), args.run_dir, verbose=args.verbose)
    last = history["epochs"][-1] if history["epochs"] else {}
    summary = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "epoch")
    print(f"Trained {count(len(history['epochs']), 'epoch')} ({summary}). Run directory: {args.run_dir}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from kcap.training.assembly import build_feature_cache, prepare_data
    from kcap.training.trainer import build_captioner

    config = dataclasses.replace(train_config(args), cache_features=True).resolved()
    data = prepare_data(config)
    model = build_captioner(config, data.vocabulary, data.normalization, reward=data.reward)
    cache, stats = build_feature_cache(config, model, data.dataset)
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
        config = train_config(args).resolved()
    if config.normalize == "dataset" and normalization:
        preprocessing = ImagePreprocessing("dataset", normalization["mean"], normalization["std"])
    else:
        preprocessing = ImagePreprocessing(config.preprocessing)
    augmentation = ImageAugmentation(config.flip, config.zoom, config.translate, config.brightness, seed=args.seed)
    path = preview_augmentation(args.image, args.output, augmentation, preprocessing, (config.image_size,) * 2, args.count)
    print(f"Wrote {path}")
    return 0
