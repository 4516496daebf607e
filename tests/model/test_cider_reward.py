"""The self-critical reward: per caption, pycocoevalcap's CIDEr-D, computed batched in TensorFlow."""

import numpy as np
import pytest
import tensorflow as tf
from pycocoevalcap.cider.cider_scorer import CiderScorer

from decoding_helpers import random_captions

from kcap.model.cider_reward import CiderReward
from kcap.text.vocabulary import END_ID


def _words(row):
    """A `<start> words <end> 0...` row → its words and `<end>`, as ids."""
    row = [int(i) for i in row[1:]]
    return row[:row.index(END_ID) + 1]


def test_the_reward_is_pycocoevalcaps_cider_d_per_caption():
    vocabulary_size, images = 9, 12  # few words: captions share n-grams, and some repeat them
    rng = np.random.default_rng(0)
    rows = random_captions(images * 5 + images, vocabulary_size, max_length=7, seed=1)
    counts = rng.integers(1, 6, images)  # 1 to 5 references an image
    references = [[_words(r) for r in rows[5 * i:5 * i + n]] for i, n in enumerate(counts)]
    candidates = [_words(r) for r in rows[5 * images:]]
    candidates[0] = list(references[0][0])  # one caption equal to a reference
    candidates[1] = [END_ID]  # and one with no word at all

    scorer = CiderScorer(n=4, sigma=6.0)
    text = lambda ids: " ".join(map(str, ids))  # noqa: E731 (`<end>` is the word "2")
    for candidate, refs in zip(candidates, references):
        scorer += (text(candidate), [text(r) for r in refs])
    _, expected = scorer.compute_score()

    reward = CiderReward(references, vocabulary_size)
    vectors = {k: tf.constant(v) for k, v in reward.reference_vectors(references).items()}
    # As samplers give them: words, <end>, then padding (and anything after an <end> is no word).
    padded = np.zeros((images, 10), "int32")
    for row, candidate in zip(padded, candidates):
        row[:len(candidate)] = candidate
    padded[2, len(candidates[2]):] = 5
    scores = tf.function(reward)(tf.constant(padded), vectors).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-6, rtol=1e-6)
    assert scores[0] > 0 and len(set(np.round(scores, 4))) > images // 2


def test_a_vocabulary_too_large_for_int64_keys_is_refused():
    with pytest.raises(ValueError, match="at most 55,108 words"):
        CiderReward([[[5, END_ID]]], vocabulary_size=60000)
