"""The `kcap` command line: data → train → caption → evaluate → export → serve, and tune.

`main` parses a command and runs it; each group of commands is a module here
(`train`, `caption`, `data`, `export`, `serve`), and `kcap tune` is `tuning.command`'s.

Example: `main(["data", "check", "--data", "synthetic"])` returns the exit code, 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import kcap
from kcap.cli.caption import add_caption_commands
from kcap.cli.data import add_data_command
from kcap.cli.export import add_export_command
from kcap.cli.serve import add_serve_command
from kcap.cli.train import add_train_commands
from tuning.command import add_tune_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcap", description=kcap.__doc__)
    parser.add_argument("--version", action="version", version=f"kcap {kcap.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_commands(sub)
    add_caption_commands(sub)
    add_data_command(sub)
    add_export_command(sub)
    add_serve_command(sub)
    add_tune_command(sub)
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
