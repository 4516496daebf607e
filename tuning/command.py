"""`kcap tune`: a keras-tuner search over the captioner's hyperparameters."""

from __future__ import annotations

import argparse
import dataclasses

from kcap.training.config import TrainConfig
from kcap.training.flags import add_train_arguments, positive_int, train_config
from kcap.utils import count
from tuning.options import DEFAULT_SEARCH_SPACE, OBJECTIVES, TUNERS


def add_tune_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `kcap tune --directory DIR --tuner ... --max-trials N --objective ... [kcap train flags]`.

    Example:

    ```python
    parser = argparse.ArgumentParser(prog="kcap")
    add_tune_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", "--data", "synthetic", "--directory", "tune", "--max-trials", "4"])
    args.func(args)
    ```
    """
    p = subparsers.add_parser(
        "tune",
        help="search hyperparameters with keras-tuner (re-run to resume)",
        description=(
            "Trains one captioner per trial (each for --epochs epochs) with the hyperparameters the tuner "
            "picks from --search-space, ranks them by --objective, and writes DIR/summary.json and "
            "DIR/best_hyperparameters.json (for `kcap train --hparams`). Re-running the same command on "
            "the same --directory continues the search. The other flags are kcap train's and fix "
            "everything the search space does not set."
        ),
    )
    p.add_argument("--directory", required=True, help="the search's folder; re-use it to resume")
    p.add_argument("--tuner", default="random", choices=TUNERS, help="search strategy (default: random)")
    p.add_argument("--max-trials", type=int, default=10, help="most trials to run (default 10; may grow on resume)")
    p.add_argument("--objective", default="val_loss", choices=list(OBJECTIVES),
                   help="what ranks trials: val_loss (lower is better), val_bleu4 or val_cider (higher is better)")
    p.add_argument("--search-space", default=str(DEFAULT_SEARCH_SPACE),
                   help="JSON file of hyperparameter ranges (default: tuning/search_space.json)")
    p.add_argument("--retrain-best", metavar="RUN", default=None,
                   help="after the search, train this run directory with the best hyperparameters")
    p.add_argument("--retrain-epochs", type=positive_int, default=None, help="epochs of the --retrain-best run (default: --epochs)")
    p.add_argument("--verbose", "-v", type=int, default=None, help="Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch")
    add_train_arguments(p, objective_flags=("--training-objective",))  # --objective: what ranks the trials
    p.set_defaults(func=cmd_tune, monitor=None)  # None: the --retrain-best run monitors the --objective
    return p


def tune_config(args: argparse.Namespace) -> TrainConfig:
    """The fixed settings of every trial, and of the `--retrain-best` run, from `kcap tune`'s flags."""
    # Unless told otherwise, the retrained run keeps the checkpoint that is best by what ranked the
    # trials; with --val-captions 0 it captions nothing during training, so it can only watch val_loss.
    default_monitor = args.objective if args.val_captions > 0 else "val_loss"
    return train_config(argparse.Namespace(**{**vars(args), "monitor": args.monitor or default_monitor}))


def cmd_tune(args: argparse.Namespace) -> int:
    from tuning.search import format_summary, retrain_best, search

    config = tune_config(args)
    if args.retrain_epochs is not None and not args.retrain_best:
        # Checked before the search, not hours later.
        raise ValueError("--retrain-epochs sets the epochs of the --retrain-best run; give --retrain-best RUN too.")
    result = search(
        config, args.directory, tuner=args.tuner, max_trials=args.max_trials, objective=args.objective,
        search_space=args.search_space, verbose=args.verbose,
    )
    print(format_summary(result.summary))
    print(f"Wrote {result.search_dir.summary}")
    if result.best_hyperparameters is None:
        print("No trial completed; no best hyperparameters.")
        return 1
    print(f"Best hyperparameters ({args.objective} {result.summary['best']['objective']:.4f}): "
          f"{result.best_hyperparameters} → {result.search_dir.best_hyperparameters}")
    if args.retrain_best:
        if args.retrain_epochs is not None:
            config = dataclasses.replace(config, epochs=args.retrain_epochs)
        history = retrain_best(config, args.directory, args.retrain_best, verbose=args.verbose)
        last = history["epochs"][-1] if history["epochs"] else {}
        scores = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "epoch")
        print(f"Trained {args.retrain_best} with the best hyperparameters ({count(len(history['epochs']), 'epoch')}; {scores}).")
    return 0
