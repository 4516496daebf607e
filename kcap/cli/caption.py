"""`kcap caption` and `kcap evaluate`: the commands that caption images with a trained run."""

from __future__ import annotations

import argparse
import re
import sys

from kcap.data.dataset import SPLITS
from kcap.training.flags import non_negative_int, positive_float, positive_int
from kcap.training.run_dir import CHECKPOINTS


def add_caption_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds `kcap caption` and `kcap evaluate`."""
    p = subparsers.add_parser("caption", help="caption image files with a trained run")
    p.add_argument("--run-dir", required=True)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP, WebP), or folders of them")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--batch-size", type=positive_int, default=32)
    _add_decoding_arguments(p)
    p.add_argument("--attention-plot", metavar="OUT.png", default=None, help="save where the model looked for each word (one image; .png, .jpg, .pdf or .svg)")
    p.set_defaults(func=cmd_caption)

    p = subparsers.add_parser("evaluate", help="score a trained run on a split (BLEU, METEOR, ROUGE-L, CIDEr-D)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    _add_decoding_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--show", type=int, default=3, help="print this many example captions")
    p.add_argument(
        "--images", default=None, metavar="DIR",
        help="the run's images folder, where it is now if it moved since training",
    )
    p.set_defaults(func=cmd_evaluate)


def _add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-size", type=positive_int, default=1, help="beam search with this many beams (1: greedy)")
    p.add_argument("--temperature", type=positive_float, default=None, help="sample words at this temperature instead")
    add_no_repeat_ngram_argument(p)


def add_no_repeat_ngram_argument(p: argparse.ArgumentParser) -> None:
    """`--no-repeat-ngram N`, for every command that takes `--beam-size`."""
    p.add_argument("--no-repeat-ngram", type=non_negative_int, default=0, metavar="N",
                   help="greedy and beam search never repeat an N-word sequence within a caption (0: off, the default)")


def _check_decoding_arguments(args: argparse.Namespace) -> None:
    """Refuses what `Captioner.generate` would, before the run is loaded and images are read."""
    if args.temperature is not None and args.beam_size > 1:
        raise ValueError("Choose --temperature (sampling) or --beam-size above 1 (beam search), not both.")
    if args.temperature is not None and args.no_repeat_ngram:
        raise ValueError("--no-repeat-ngram guards greedy decoding and beam search, not --temperature (sampling).")


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
        no_repeat_ngram=args.no_repeat_ngram, progress=len(images) > args.batch_size,
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
    from kcap.inference import load_run

    _check_decoding_arguments(args)
    trained = load_run(args.run_dir, args.checkpoint)
    report = evaluate_run(
        trained, args.split, args.batch_size,
        beam_size=args.beam_size, temperature=args.temperature, images_dir=args.images,
        no_repeat_ngram=args.no_repeat_ngram,
    )
    base = report["baseline"]

    def show(value):
        return "n/a" if value is None else f"{value:.4f}"

    decoding = f"beam {args.beam_size}" if args.beam_size > 1 else ("sampling" if args.temperature else "greedy")
    if args.no_repeat_ngram:
        decoding += f", no repeated {args.no_repeat_ngram}-grams"
    print(f"{args.split}: {report['num_images']} images, {report['distinct_captions']} distinct captions ({decoding})")
    for key, name in METRIC_LABELS.items():
        print(f"  {name:8s} {show(report[key])}   (image-blind baseline {show(base[key])})")
    if report.get("meteor_error"):
        print(f"  METEOR unavailable: {report['meteor_error']}")
    if report["tokenization"] == "ptb":
        print("  tokenisation: PTB, as the COCO caption evaluation's")
    else:
        why = report.get("tokenization_error") or "no Java"
        print(f"  tokenisation: kcap's own ({why}), not the COCO caption evaluation's PTB tokenizer")
    never, repeat = report["never_ended"], report["repeated_trigram"]
    print(f"  captions that never end {never:.1%}, that repeat a trigram {repeat:.1%}")
    for item in report["captions"][: args.show]:
        print(f"  {item['image']}\n    kcap:      {item['caption']}\n    reference: {item['references'][0]}")
    print(f"Wrote {trained.run.evaluation(args.split)} and {trained.run.results(args.split)}")
    return 0
