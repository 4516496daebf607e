"""CIDEr-D of token-id captions, in TensorFlow and batched: the reward of self-critical training.

pycocoevalcap's `CiderScorer` (the CIDEr-D of the COCO evaluation) loops in
Python over every caption and n-gram; a training step that rewards hundreds of
sampled captions cannot. Here an n-gram of token ids is one exact int64 key
(the ids as digits in base `vocabulary_size`), and everything that depends on
the references only is computed once: the document frequencies (a sorted key
array, searched with `tf.searchsorted`) and each image's reference tf-idf
vectors (padded arrays the training data feeds beside the image). A step then
scores every candidate against its image's references with tensor ops alone.

The score is pycocoevalcap's, to float64 rounding: n-grams of 1 to 4 tokens,
tf-idf weights `count * (log(images) - log(max(1, df)))`, the clipped cosine
`sum min(c, r) * r / (|c| |r|)` per n, averaged over n, times a Gaussian
penalty `exp(-delta**2 / (2 * sigma**2))` on the difference in length (counted,
as pycocoevalcap does, in bigrams), averaged over the references, times 10.
Captions are their words and `<end>`, which counts as a word: as in the
self-critical literature, a caption that ends where its references end scores
for it.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from kcap.text.vocabulary import END_ID, PAD_ID

NGRAMS = 4
# Pads the sorted key arrays: above every real key, so they stay sorted.
_NO_KEY = np.iinfo(np.int64).max

# The arrays `CiderReward.reference_vectors` gives per image.
REFERENCE_KEYS = ("keys", "weights", "norms", "lengths", "counts")


class CiderReward:
    """CIDEr-D (pycocoevalcap's, sigma 6, n = 1..4) of sampled captions against their images' references.

    Args:
        references: every training image's references, each a list of
            captions as token ids (words, then `<end>`; no `<start>` or
            padding). Their n-grams give the document frequencies.
        vocabulary_size: ids are below it; at most 55,108, so that a 4-gram
            key fits in an int64.
        sigma: the length penalty's standard deviation.

    Example:

    ```python
    reward = CiderReward([[[5, 6, END_ID], [5, 7, END_ID]], [[8, END_ID]]], vocabulary_size=10)
    vectors = reward.reference_vectors([[[5, 6, END_ID], [5, 7, END_ID]]])  # numpy, per image
    scores = reward(tf.constant([[5, 6, END_ID, 0]]), {k: tf.constant(v) for k, v in vectors.items()})
    ```
    """

    def __init__(self, references: Sequence[Sequence[Sequence[int]]], vocabulary_size: int, sigma: float = 6.0):
        if vocabulary_size ** NGRAMS >= 2 ** 63:
            raise ValueError(
                f"CIDEr-D rewards pack 4 token ids into an int64, so the vocabulary must have at most 55,108 "
                f"words; it has {vocabulary_size}. Lower --vocab-size."
            )
        if not references:
            raise ValueError("CIDEr-D needs the references of at least one image for its document frequencies.")
        self.vocabulary_size = int(vocabulary_size)
        self.sigma = float(sigma)
        frequencies: collections.Counter[int] = collections.Counter()
        for captions in references:
            frequencies.update({key for caption in captions for key in self._counts(caption)})
        self.log_images = math.log(len(references))
        keys = np.array(sorted(frequencies), np.int64)
        self._df_keys = tf.constant(keys)
        self._df_logs = tf.constant([math.log(frequencies[key]) for key in keys.tolist()], tf.float64)
        self._log_df = {key: math.log(count) for key, count in frequencies.items()}

    # -- once, in numpy: the references --------------------------------------------

    def _counts(self, caption: Sequence[int]) -> collections.Counter:
        """The n-gram keys of one caption (ids, `<end>` included), with their counts."""
        ids = [int(i) for i in caption]
        base = self.vocabulary_size
        counts: collections.Counter[int] = collections.Counter()
        for n in range(1, NGRAMS + 1):
            for start in range(len(ids) - n + 1):
                counts[sum(ids[start + i] * base ** i for i in range(n))] += 1
        return counts

    def reference_vectors(self, references: Sequence[Sequence[Sequence[int]]]) -> dict[str, np.ndarray]:
        """Each image's reference tf-idf vectors, padded into arrays with one row per image.

        `keys` int64 (images, refs, ngrams) sorted, padded with int64's
        largest; `weights` float64 beside them (0 on padding); `norms`
        float64 (images, refs, 4), per n; `lengths` float64 (images, refs),
        in bigrams; `counts` float64 (images,), the references of each image.
        Any rows of these (a batch's images) go to `__call__`.
        """
        vectors = [[self._vector(caption) for caption in captions] for captions in references]
        width = max((len(keys) for image in vectors for keys, _, _, _ in image), default=1)
        refs = max(len(image) for image in vectors)
        out = {
            "keys": np.full((len(vectors), refs, width), _NO_KEY, np.int64),
            "weights": np.zeros((len(vectors), refs, width), np.float64),
            "norms": np.zeros((len(vectors), refs, NGRAMS), np.float64),
            "lengths": np.zeros((len(vectors), refs), np.float64),
            "counts": np.array([len(image) for image in vectors], np.float64),
        }
        for i, image in enumerate(vectors):
            for r, (keys, weights, norms, length) in enumerate(image):
                out["keys"][i, r, :len(keys)] = keys
                out["weights"][i, r, :len(keys)] = weights
                out["norms"][i, r] = norms
                out["lengths"][i, r] = length
        return out

    def _vector(self, caption: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        counts = self._counts(caption)
        keys = np.array(sorted(counts), np.int64)
        weights = np.array([counts[k] * (self.log_images - self._log_df.get(k, 0.0)) for k in keys.tolist()])
        # A key of n ids has n digits (no id is 0): its order is how many powers of the base it reaches.
        orders = sum((keys >= self.vocabulary_size ** n).astype(np.int64) for n in range(1, NGRAMS))
        norms = np.sqrt(np.bincount(orders, weights ** 2, minlength=NGRAMS)) if len(keys) else np.zeros(NGRAMS)
        return keys, weights, norms, max(len(caption) - 1, 0)

    # -- every step, in TensorFlow: the candidates ---------------------------------

    def __call__(self, candidates: tf.Tensor, references: dict[str, tf.Tensor]) -> tf.Tensor:
        """CIDEr-D float32 (batch,) of int (batch, time) captions (words, `<end>`, then anything)
        against `references`, rows of `reference_vectors` (one per caption)."""
        ids = tf.cast(candidates, tf.int64)
        # Up to and including the first <end>; padding (a caption cut without one) is no word.
        ended_before = tf.cumsum(tf.cast(tf.equal(ids, END_ID), tf.int32), axis=1, exclusive=True) > 0
        ids = tf.where(ended_before, tf.constant(PAD_ID, tf.int64), ids)
        is_word = tf.not_equal(ids, PAD_ID)
        time = tf.shape(ids)[1]
        base = tf.constant(self.vocabulary_size, tf.int64)
        keys, valid = [], []
        key, ok = tf.zeros_like(ids), tf.ones_like(is_word)
        for n in range(NGRAMS):
            # The n-gram starting at each position: the next id shifted in as the n-th digit.
            shifted = tf.pad(ids[:, n:], [[0, 0], [0, n]])
            key = key + shifted * base ** n
            ok = ok & tf.pad(is_word[:, n:], [[0, 0], [0, n]])
            keys.append(tf.where(ok, key, _NO_KEY))
            valid.append(ok)
        keys, valid = tf.concat(keys, axis=1), tf.concat(valid, axis=1)  # (batch, 4 * time), n-major
        weights = self._candidate_weights(keys, valid)
        norms = tf.sqrt(tf.reduce_sum(tf.reshape(weights ** 2, (-1, NGRAMS, time)), axis=2))  # (batch, 4)
        lengths = tf.reduce_sum(tf.cast(valid[:, time:2 * time], tf.float64), axis=1)  # bigrams

        # Each candidate n-gram's weight in each reference: 0 where the reference lacks it.
        ref_keys = references["keys"]
        queries = tf.broadcast_to(keys[:, None, :], tf.concat([tf.shape(ref_keys)[:2], tf.shape(keys)[1:]], 0))
        at = tf.minimum(tf.searchsorted(ref_keys, queries), tf.shape(ref_keys)[2] - 1)
        found = tf.equal(tf.gather(ref_keys, at, batch_dims=2), queries)
        ref_weights = tf.where(found, tf.gather(references["weights"], at, batch_dims=2), 0.0)
        clipped = tf.minimum(weights[:, None, :], ref_weights) * ref_weights  # (batch, refs, 4 * time)
        overlap = tf.reduce_sum(tf.reshape(clipped, (tf.shape(clipped)[0], -1, NGRAMS, time)), axis=3)
        norm_products = norms[:, None, :] * references["norms"]
        cosine = tf.where(norm_products > 0, overlap / tf.where(norm_products > 0, norm_products, 1.0), overlap)
        delta = lengths[:, None] - references["lengths"]
        penalty = tf.exp(-(delta ** 2) / (2.0 * self.sigma ** 2))
        has_ref = tf.range(tf.shape(ref_keys)[1], dtype=tf.float64)[None, :] < references["counts"][:, None]
        per_ref = tf.where(has_ref, tf.reduce_mean(cosine, axis=2) * penalty, 0.0)
        score = 10.0 * tf.reduce_sum(per_ref, axis=1) / tf.maximum(references["counts"], 1.0)
        return tf.cast(score, tf.float32)

    def _candidate_weights(self, keys: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
        """tf-idf of each distinct n-gram at its first position in the caption, 0 elsewhere."""
        same = tf.equal(keys[:, :, None], keys[:, None, :]) & valid[:, None, :]
        term_counts = tf.reduce_sum(tf.cast(same, tf.float64), axis=2)
        positions = tf.range(tf.shape(keys)[1])
        earlier = positions[None, :] < positions[:, None]  # [i, j]: j before i
        first = valid & ~tf.reduce_any(same & earlier[None], axis=2)
        count = tf.shape(self._df_keys)[0]
        at = tf.minimum(tf.searchsorted(self._df_keys, tf.reshape(keys, [-1])), count - 1)
        known = tf.equal(tf.gather(self._df_keys, at), tf.reshape(keys, [-1]))
        log_df = tf.reshape(tf.where(known, tf.gather(self._df_logs, at), 0.0), tf.shape(keys))
        return tf.where(first, term_counts * (self.log_images - log_df), 0.0)
