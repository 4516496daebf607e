"""`kcap export`: a trained run → a SavedModel that captions image bytes."""

from __future__ import annotations

import argparse

from kcap.cli.caption import add_no_repeat_ngram_argument
from kcap.training.run_dir import CHECKPOINTS


def add_export_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `kcap export --run-dir RUN --output DIR [--beam-size K] [--force] [--checkpoint best|last]`.

    Example:

    ```python
    parser = argparse.ArgumentParser(prog="kcap")
    add_export_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--run-dir", "runs/shapes", "--output", "exported/shapes"])
    args.func(args)
    ```
    """
    p = subparsers.add_parser(
        "export",
        help="export a trained run as a SavedModel (image bytes in, captions out)",
        description=(
            "Writes a TensorFlow SavedModel whose serving_default signature takes JPEG/PNG bytes "
            "(image_bytes, string [None]) and returns caption (string [None]) and score "
            "(float32 [None]); serving_images takes float32 pixels [None, H, W, 3] in [0, 255]. "
            "Serving it needs TensorFlow only."
        ),
    )
    p.add_argument("--run-dir", required=True, help="the trained run directory")
    p.add_argument("--output", required=True, help="SavedModel directory to write")
    p.add_argument("--beam-size", type=int, default=1, help="1: greedy, as `kcap caption` (default); more: beam search")
    add_no_repeat_ngram_argument(p)
    p.add_argument("--force", action="store_true", help="replace an existing export at --output")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from kcap.export.savedmodel import export_run

    path = export_run(
        args.run_dir, args.output, beam_size=args.beam_size, force=args.force, checkpoint=args.checkpoint,
        no_repeat_ngram=args.no_repeat_ngram,
    )
    print(
        f"Exported {args.run_dir} ({args.checkpoint} checkpoint, beam size {args.beam_size}) to {path}\n"
        f"  serving_default: image_bytes string [None] -> caption string [None], score float32 [None]\n"
        f"  serving_images:  images float32 [None, H, W, 3] in [0, 255] -> caption, score\n"
        f"  decode_image:    image_bytes string [] -> pixels uint8 [H, W, 3]\n"
        f"  caption_details: images -> caption, score, candidates, candidate_scores, attention (for kcap serve)"
    )
    return 0
