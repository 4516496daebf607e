import math

import pytest

from kcap.evaluation.bleu import corpus_bleu_scores


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
    p = [8 / 9, 5 / 7, 2 / 5, 0 / 3]
    # Brevity: hyp 1 has 6 words, closest reference 6; hyp 2 has 3, closest 4 → r=10, c=9.
    bp = math.exp(1 - 10 / 9)
    scores = corpus_bleu_scores(hypotheses, references)
    assert scores["bleu1"] == pytest.approx(bp * p[0], abs=1e-9)
    assert scores["bleu2"] == pytest.approx(bp * math.sqrt(p[0] * p[1]), abs=1e-9)
    assert scores["bleu3"] == pytest.approx(bp * (p[0] * p[1] * p[2]) ** (1 / 3), abs=1e-9)
    assert scores["bleu4"] < 1e-12  # no 4-gram matches anywhere, and no smoothing


def test_bleu4_with_four_gram_matches_equals_the_hand_computed_value():
    hypotheses = ["the cat sat on the mat", "a dog runs in the park"]
    references = [
        ["the cat is on the mat", "there is a cat on the mat"],
        ["a dog is running", "the dog runs fast", "a dog runs in the park"],
    ]
    # hyp 2 now equals its third reference: 6/6, 5/5, 4/4, 3/3; lengths match exactly (BP = 1).
    p = [11 / 12, 8 / 10, 5 / 8, 3 / 6]
    scores = corpus_bleu_scores(hypotheses, references)
    assert scores["bleu4"] == pytest.approx((p[0] * p[1] * p[2] * p[3]) ** 0.25, abs=1e-9)
    assert scores["bleu2"] == pytest.approx((p[0] * p[1]) ** 0.5, abs=1e-9)


def test_bleu_is_one_for_an_exact_match_and_normalises_text():
    scores = corpus_bleu_scores(["A red circle, left of a blue square."], [["a red circle left of a blue square"]])
    assert scores["bleu4"] == pytest.approx(1.0)


def test_bleu_needs_matching_lengths():
    with pytest.raises(ValueError, match="hypotheses"):
        corpus_bleu_scores(["a"], [])
