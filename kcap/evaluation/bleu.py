"""Corpus BLEU against several references per image."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from nltk.translate.bleu_score import corpus_bleu

from kcap.text.tokenize import tokenize


def corpus_bleu_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4 of generated captions, each against all references of its image.

    Standard multi-reference corpus BLEU (Papineni et al.), as nltk's
    `corpus_bleu` computes it without smoothing: n-gram counts are clipped
    by the most any one reference holds, summed over the corpus, and the
    brevity penalty uses the reference length closest to each hypothesis.
    Captions are normalised as for the vocabulary.

    Example:

    >>> scores = corpus_bleu_scores(["a red circle"], [["a red circle", "a circle"]])
    >>> round(scores["bleu1"], 3), round(scores["bleu3"], 3)
    (1.0, 1.0)
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists.")
    if not hypotheses:
        raise ValueError("No captions to score.")
    hyp_tokens = [tokenize(h) for h in hypotheses]
    ref_tokens = [[tokenize(r) for r in refs] for refs in references]
    weights = {
        "bleu1": (1.0,),
        "bleu2": (0.5, 0.5),
        "bleu3": (1 / 3, 1 / 3, 1 / 3),
        "bleu4": (0.25, 0.25, 0.25, 0.25),
    }
    with warnings.catch_warnings():
        # nltk warns when an n-gram order has no match; the score (0) says as much.
        warnings.simplefilter("ignore", UserWarning)
        return {name: float(corpus_bleu(ref_tokens, hyp_tokens, weights=w)) for name, w in weights.items()}
