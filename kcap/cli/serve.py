"""`kcap serve`: a run or an export behind a web page and a batching JSON API."""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from pathlib import Path

from kcap.serve.settings import ServeSettings
from kcap.training.flags import positive_float, positive_int
from kcap.training.run_dir import CHECKPOINTS

log = logging.getLogger("kcap")

# A run is served with beam search so that the page has other candidates to show.
DEFAULT_RUN_BEAM_SIZE = 3


def add_serve_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `kcap serve (--run-dir RUN | --export DIR) [--host H] [--port P] [batching and limits]`.

    Example:

    ```python
    parser = argparse.ArgumentParser(prog="kcap")
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--run-dir", "runs/shapes", "--port", "8080"])
    args.func(args)  # serves until Ctrl-C
    ```
    """
    d = ServeSettings()
    p = subparsers.add_parser(
        "serve",
        help="caption images in the browser and over HTTP (a page, a JSON API, TensorFlow Serving's REST format)",
        description=(
            "Serves a trained run (exported to a temporary SavedModel first) or a kcap export: the page at /, "
            "POST /caption (multipart upload), POST /v1/models/kcap:predict (TensorFlow Serving's REST format), "
            "GET /v1/models/kcap and GET /healthz. Concurrent requests are captioned in batches. "
            "Needs the serve extra: pip install 'kcap[serve]'."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="a trained run directory")
    source.add_argument("--export", metavar="DIR", help="a SavedModel written by kcap export")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help="with --run-dir: which model (default: best)")
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help=f"with --run-dir: beams of the search (default {DEFAULT_RUN_BEAM_SIZE}; 1: greedy, as kcap "
                        "caption's default); an export keeps the beam size it was exported with")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--max-batch-size", type=positive_int, default=d.max_batch_size,
                   help=f"most images captioned in one batch (default {d.max_batch_size}; 1: no batching)")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                   help="caption concurrent requests together (default); --no-batching is --max-batch-size 1")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"how long an image waits for others to join its batch (default {d.max_wait_ms:g} ms)")
    p.add_argument("--max-queue", type=positive_int, default=d.max_queue,
                   help=f"images waiting beyond this are refused with 503 (default {d.max_queue})")
    p.add_argument("--max-upload-mb", type=positive_float, default=d.max_upload_mb,
                   help=f"largest request body (default {d.max_upload_mb:g} MB)")
    p.add_argument("--max-pixels", type=positive_int, default=d.max_pixels,
                   help=f"largest image, width x height, checked before decoding (default {d.max_pixels:,})")
    p.add_argument("--timeout-s", type=positive_float, default=d.timeout_s,
                   help=f"a request not answered in this time gets 504 (default {d.timeout_s:g} s)")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from kcap.serve.app import build_app
    from kcap.serve.model import ServedModel

    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms must be 0 or more, got {args.max_wait_ms:g}.")
    settings = ServeSettings(
        max_batch_size=args.max_batch_size if args.batching else 1, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
        timeout_s=args.timeout_s,
    )
    with contextlib.ExitStack() as stack:
        if args.run_dir:
            export_dir = _export_for_serving(args.run_dir, args.checkpoint, args.beam_size or DEFAULT_RUN_BEAM_SIZE, stack)
            model = ServedModel.load(export_dir, source="run")
        else:
            model = ServedModel.load(args.export, source="export")
            if args.beam_size is not None and args.beam_size != model.beam_size:
                raise ValueError(f"{args.export} was exported with beam size {model.beam_size}; to serve beam size "
                                 f"{args.beam_size}, export again with kcap export --beam-size {args.beam_size}.")
        if model.missing:
            log.warning("%s lacks the signatures %s (exported by an older kcap): it serves captions and scores, one "
                        "request at a time, without beam candidates or attention. Export it again with kcap export "
                        "for all of them.", args.export, ", ".join(model.missing))
        app = build_app(model, settings)
        logging.getLogger("kcap.serve").setLevel(logging.INFO)
        log.info("Serving %s (beam size %d) on http://%s:%d/  (Ctrl-C stops)",
                 args.run_dir or args.export, model.beam_size, args.host, args.port)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _export_for_serving(run_dir: str, checkpoint: str, beam_size: int, stack: contextlib.ExitStack) -> Path:
    """Exports the run into a temporary SavedModel, removed when the server stops: served like any export."""
    from kcap.export.savedmodel import export_run

    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kcap-serve-")))
    log.info("Exporting %s (%s checkpoint, beam size %d) for serving...", run_dir, checkpoint, beam_size)
    return export_run(run_dir, folder / "model", beam_size=beam_size, checkpoint=checkpoint)
