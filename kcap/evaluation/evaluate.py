"""Scoring a trained run on one of its splits."""

from __future__ import annotations

import collections
from pathlib import Path

from kcap.evaluation.bleu import corpus_bleu_scores
from kcap.inference import load_run
from kcap.text.tokenize import normalize_caption
from kcap.utils.files import atomic_write_json


def blind_baseline(train_captions: list[str]) -> str:
    """The most frequent (normalised) training caption: what a model that ignores the image says."""
    counts = collections.Counter(normalize_caption(c) for c in train_captions)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def evaluate_run(
    run_dir: str | Path, split: str = "test", batch_size: int = 32, checkpoint: str = "best",
    progress: bool = True,
) -> dict:
    """Captions every image of `split` and scores them against all their references.

    Writes `RUN/eval_<split>.json` and returns the same dict: `bleu1`..`bleu4`,
    `num_images`, `captions` and the image-blind baseline's scores.
    """
    trained = load_run(run_dir, checkpoint)
    manifest = trained.run.load_splits()
    images = manifest["splits"].get(split) or []
    if not images:
        raise ValueError(f"The {split!r} split of {trained.run.path} has no images.")
    results = trained.caption_files([i["image"] for i in images], batch_size=batch_size, progress=progress)
    references = [i["captions"] for i in images]
    hypotheses = [r["caption"] for r in results]
    scores = corpus_bleu_scores(hypotheses, references)

    baseline_caption = blind_baseline([c for i in manifest["splits"]["train"] for c in i["captions"]])
    baseline = corpus_bleu_scores([baseline_caption] * len(images), references)

    report = {
        "split": split,
        "checkpoint": str(trained.run.model_path(checkpoint)),
        **scores,
        "num_images": len(images),
        "distinct_captions": len(set(hypotheses)),
        "baseline": {"caption": baseline_caption, **baseline},
        "captions": [
            {"image": r["image"], "caption": r["caption"], "references": refs}
            for r, refs in zip(results, references)
        ],
    }
    atomic_write_json(trained.run.evaluation(split), report)
    return report
