import math

import pytest

from kcap.evaluation.metrics import caption_metrics

# pycocoevalcap's smoothing of each n-gram precision (and of the length ratio).
TINY, SMALL = 1e-15, 1e-9


def bleu(hypotheses, references):
    """BLEU-1..4 as `kcap evaluate` reports them (METEOR, which needs Java, left out)."""
    return caption_metrics(hypotheses, references, meteor=False)


def precision(matches, guesses):
    return (matches + TINY) / (guesses + SMALL)


def test_bleu_matches_hand_computed_multi_reference_values():
    hypotheses = ["the cat sat on the mat", "a dog runs"]
    references = [
        ["the cat is on the mat", "there is a cat on the mat"],
        ["a dog is running", "the dog runs fast", "a dog runs in the park"],
    ]
    # Clipped n-gram matches, summed over the corpus (counts worked out by hand):
    # hyp 1 (6 words): unigrams 5/6 ("sat" unmatched), bigrams 3/5 (the cat, on the, the mat),
    #   trigrams 1/4 (on the mat), 4-grams 0/3
    # hyp 2 (3 words): 3/3, 2/2, 1/1, 0/0
    p = [precision(8, 9), precision(5, 7), precision(2, 5), precision(0, 3)]
    # Brevity: hyp 1 has 6 words, closest reference 6; hyp 2 has 3, closest 4 → r=10, c=9.
    bp = math.exp(1 - 1 / ((9 + TINY) / (10 + SMALL)))
    scores = bleu(hypotheses, references)
    assert scores["bleu1"] == pytest.approx(bp * p[0], abs=1e-12)
    assert scores["bleu2"] == pytest.approx(bp * math.sqrt(p[0] * p[1]), abs=1e-12)
    assert scores["bleu3"] == pytest.approx(bp * (p[0] * p[1] * p[2]) ** (1 / 3), abs=1e-12)
    # No 4-gram matches anywhere: the smoothing leaves a small positive BLEU-4, as in COCO's evaluation.
    assert scores["bleu4"] == pytest.approx(bp * (p[0] * p[1] * p[2] * p[3]) ** 0.25, rel=1e-9)
    assert 1e-5 < scores["bleu4"] < 1e-3


def test_bleu4_with_four_gram_matches_equals_the_hand_computed_value():
    hypotheses = ["the cat sat on the mat", "a dog runs in the park"]
    references = [
        ["the cat is on the mat", "there is a cat on the mat"],
        ["a dog is running", "the dog runs fast", "a dog runs in the park"],
    ]
    # hyp 2 now equals its third reference: 6/6, 5/5, 4/4, 3/3; lengths match exactly, and
    # the smoothed length ratio (12 + 1e-15) / (12 + 1e-9) leaves a brevity penalty a hair below 1.
    p = [precision(11, 12), precision(8, 10), precision(5, 8), precision(3, 6)]
    bp = math.exp(1 - 1 / ((12 + TINY) / (12 + SMALL)))
    scores = bleu(hypotheses, references)
    assert scores["bleu4"] == pytest.approx(bp * (p[0] * p[1] * p[2] * p[3]) ** 0.25, abs=1e-12)
    assert scores["bleu2"] == pytest.approx(bp * (p[0] * p[1]) ** 0.5, abs=1e-12)


def test_bleu_is_one_for_an_exact_match_and_normalises_text():
    scores = bleu(["A red circle, left of a blue square."], [["a red circle left of a blue square"]])
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-9)


def test_bleu_brevity_penalty_uses_the_closest_reference_length_shorter_on_ties():
    # 4 words; references of 3 and 5 words are equally close: the shorter (3) counts, so no penalty.
    scores = bleu(["a b c d"], [["a b c", "a b c d e"]])
    assert scores["bleu1"] == pytest.approx(precision(4, 4), abs=1e-12)
    # 2 words against references of 3 and 6: the closest is 3, penalty exp(1 - 3/2).
    scores = bleu(["a b"], [["a b c", "a b c d e f"]])
    bp = math.exp(1 - 1 / ((2 + TINY) / (3 + SMALL)))
    assert scores["bleu1"] == pytest.approx(bp * precision(2, 2), abs=1e-12)


def test_bleu_needs_matching_lengths():
    with pytest.raises(ValueError, match="hypotheses"):
        bleu(["a"], [])
