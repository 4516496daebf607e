#!/usr/bin/env python3
"""Size and captioning latency of a `kcap export` SavedModel, printed as JSON.

    scripts/bench_export.py EXPORT_DIR IMAGE_FOLDER [--batch-sizes 1 32] [--images 64] [--repeats 3]

It needs TensorFlow only (no kcap), like a serving host. Image files are read
into memory first, so the timings cover what `serving_default` does: JPEG/PNG
decoding, resizing, the backbone, the encoder and the decoding loop, ids to
words. Each batch size gets warm-up calls before timing (the first call pays for
graph setup and memory allocation; `first_call_seconds` reports it).

Example:

    scripts/bench_export.py exported/flickr8k ../shared/data/flickr8k_1000/Images --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def directory_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_size(export_dir: Path) -> dict:
    """Bytes on disk: the whole export and its parts."""
    return {
        "total": directory_bytes(export_dir),
        "saved_model_pb": (export_dir / "saved_model.pb").stat().st_size,
        "variables": directory_bytes(export_dir / "variables"),
        "assets": directory_bytes(export_dir / "assets") if (export_dir / "assets").is_dir() else 0,
    }


def load_images(folder: Path, count: int) -> list[tuple[str, bytes]]:
    """The first `count` JPEG/PNG files of `folder` (sorted by name), as bytes."""
    if not folder.is_dir():
        raise SystemExit(f"bench_export: {folder} is not a folder of images.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not paths:
        raise SystemExit(f"bench_export: no {'/'.join(IMAGE_SUFFIXES)} files in {folder}.")
    return [(p.name, p.read_bytes()) for p in paths]


def summary_ms(seconds: list[float]) -> dict:
    ms = sorted(s * 1000.0 for s in seconds)
    return {
        "median": round(statistics.median(ms), 3),
        "mean": round(statistics.fmean(ms), 3),
        "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3),
        "min": round(ms[0], 3),
    }


def bench_batch_size(serve, images: list[bytes], batch_size: int, repeats: int, warmup: int) -> dict:
    """Times `serve` on batches of `batch_size` images cycled from `images`."""
    import tensorflow as tf

    # Enough batches to go through every image `repeats` times (at least one batch).
    calls = max(1, -(-len(images) * repeats // batch_size))
    batches = [
        tf.constant([images[(i * batch_size + j) % len(images)] for j in range(batch_size)])
        for i in range(calls)
    ]
    for batch in batches[: max(1, warmup)]:
        serve(image_bytes=batch)["caption"].numpy()
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        out = serve(image_bytes=batch)
        out["caption"].numpy(), out["score"].numpy()  # wait for the result
        seconds.append(time.perf_counter() - start)
    per_image = [s / batch_size for s in seconds]
    return {
        "batch_size": batch_size,
        "calls": calls,
        "per_batch_ms": summary_ms(seconds),
        "per_image_ms": summary_ms(per_image),
        "images_per_second": round(batch_size * len(seconds) / sum(seconds), 2),
    }


def machine() -> dict:
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path, help="a SavedModel written by `kcap export`")
    parser.add_argument("images", type=Path, help="folder of JPEG/PNG files")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--images", dest="count", type=int, default=64, help="how many files to use (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per batch size")
    args = parser.parse_args(argv)

    if not (args.export_dir / "saved_model.pb").is_file():
        raise SystemExit(f"bench_export: {args.export_dir} holds no saved_model.pb; run `kcap export` first.")
    if min(args.batch_sizes) < 1 or args.count < 1 or args.repeats < 1:
        raise SystemExit("bench_export: --batch-sizes, --images and --repeats must be positive.")
    images = load_images(args.images, args.count)

    import tensorflow as tf

    start = time.perf_counter()
    loaded = tf.saved_model.load(str(args.export_dir))
    load_seconds = time.perf_counter() - start
    if "serving_default" not in loaded.signatures:
        raise SystemExit(f"bench_export: no signature 'serving_default'; found {sorted(loaded.signatures)}.")
    serve = loaded.signatures["serving_default"]

    start = time.perf_counter()
    first = serve(image_bytes=tf.constant([images[0][1]]))
    first_caption = first["caption"].numpy()[0].decode()
    first_call_seconds = time.perf_counter() - start

    info_path = args.export_dir / "assets" / "export.json"
    report = {
        "export_dir": str(args.export_dir),
        "export": json.loads(info_path.read_text()) if info_path.is_file() else None,
        "size_bytes": export_size(args.export_dir),
        "image_folder": str(args.images),
        "images": len(images),
        "mean_image_bytes": round(statistics.fmean(len(b) for _, b in images)),
        "load_seconds": round(load_seconds, 3),
        "first_call_seconds": round(first_call_seconds, 3),
        "example": {"image": images[0][0], "caption": first_caption, "score": float(first["score"].numpy()[0])},
        "latency": [
            bench_batch_size(serve, [b for _, b in images], size, args.repeats, args.warmup)
            for size in args.batch_sizes
        ],
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
