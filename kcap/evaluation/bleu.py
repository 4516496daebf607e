"""Corpus BLEU against several references per image (pycocoevalcap's BLEU)."""

from __future__ import annotations

from collections.abc import Sequence

from kcap.evaluation.metrics import caption_metrics


def corpus_bleu_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4 of generated captions, each against all references of its image.

    The BLEU of the COCO caption evaluation (`pycocoevalcap`'s `Bleu(4)`, see
    `kcap.evaluation.metrics`): n-gram counts clipped by the most any one
    reference holds and summed over the corpus, the brevity penalty against
    the reference length closest to each hypothesis, and a tiny smoothing,
    so an n-gram order without a single match gives a small positive score
    rather than 0. Captions are normalised as for the vocabulary.

    Example:

    >>> scores = corpus_bleu_scores(["a red circle"], [["a red circle", "a circle"]])
    >>> round(scores["bleu1"], 6), round(scores["bleu3"], 6)
    (1.0, 1.0)
    """
    scores = caption_metrics(hypotheses, references, meteor=False)
    return {f"bleu{n}": scores[f"bleu{n}"] for n in range(1, 5)}
