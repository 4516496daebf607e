"""`kcap data synthetic` and `kcap data check`: the commands about data sets."""

from __future__ import annotations

import argparse
import json

from kcap.data.caption_files import caption_formats
from kcap.data.loading import SYNTHETIC
from kcap.training.flags import positive_int
from kcap.utils import count


def add_data_command(subparsers: argparse._SubParsersAction) -> None:
    """Adds `kcap data synthetic` and `kcap data check`."""
    p = subparsers.add_parser("data", help="data sets: check a caption file and its images, or generate the synthetic set")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    q = data_sub.add_parser("synthetic", help="write the embedded synthetic set to disk")
    q.add_argument("--output", required=True, help="folder for images/ and captions.csv")
    q.add_argument("--num-images", type=positive_int, default=3000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--image-size", type=int, default=96)
    q.add_argument("--force", action="store_true", help="replace an earlier synthetic set of other settings at --output")
    q.set_defaults(func=cmd_data_synthetic)

    q = data_sub.add_parser("check", help="report every bad image and caption row of a data set (exit 2 if any)")
    q.add_argument("--data", required=True, help=f"a caption file or a folder holding one ({SYNTHETIC!r}: the embedded set)")
    q.add_argument("--images", default=None, help="images folder (default: Images/ or images/ beside the caption file)")
    q.add_argument("--format", default="auto", choices=caption_formats(), help="caption file format (default: detected)")
    q.add_argument("--full-decode", action="store_true", help="decode every image with TensorFlow (slower, certain)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=cmd_data_check)


def cmd_data_synthetic(args: argparse.Namespace) -> int:
    from kcap.data.synthetic import write_synthetic_dataset

    path = write_synthetic_dataset(args.output, args.num_images, args.seed, args.image_size, force=args.force)
    print(f"Synthetic set: {count(args.num_images, 'image')} and their captions in {path}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Prints the report; 0 when training would find nothing to refuse, 2 otherwise."""
    from kcap.data.check import check_data

    data = args.data
    if data == SYNTHETIC:
        from kcap.data.synthetic import cached_synthetic_dataset

        data = cached_synthetic_dataset()
    report = check_data(data, args.images, args.format, full_decode=args.full_decode)
    print(json.dumps(report.to_json(), indent=2, ensure_ascii=False) if args.json else report.format())
    return 0 if report.ok else 2
