"""Sampling: each word drawn from the model's distribution at a temperature, optionally among the top k."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from kcap.model.samplers.base import Decoded, Sampler, word_by_word

if TYPE_CHECKING:
    from kcap.model.decoders import Decoder

_FLOAT32_TINY = 1.1754944e-38  # numpy.finfo("float32").tiny


class RandomSampler(Sampler):
    """Draws each word from `softmax(logits / temperature)`, reproducibly.

    Random numbers come from a stateless RNG. Step `t` uses
    `fold_in([seed, 0], t)`, so the same seed, inputs and batch always give
    the same captions. The score is the caption's log-probability under the
    model itself (temperature 1), so it can be compared with greedy and beam
    scores. As `temperature` goes to 0 the result approaches greedy decoding.

    Args:
        temperature: a positive number. Below 1 it sharpens the distribution;
            above 1 it flattens it.
        top_k: draw among the `top_k` likeliest words only (and any tied
            with the last of them); `None` draws among all.
        seed: an integer seed.

    Example:

    ```python
    ids, attention, scores = model.generate(inputs, RandomSampler(temperature=0.8, top_k=10, seed=3))
    ```
    """

    TENSORS = {"temperature": tf.float32, "seed": tf.int64}
    # stateless_categorical has no XLA kernel.
    jit_compile = False

    def __init__(self, temperature: float | tf.Tensor = 1.0, top_k: int | None = None, seed: int | tf.Tensor = 0):
        if not tf.is_tensor(temperature) and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature}.")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}.")
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed

    def get_config(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "seed": self.seed}

    def __call__(self, decoder: Decoder, encoded: tf.Tensor, max_length: tf.Tensor | int) -> Decoded:
        # A temperature float32 rounds to 0 (or inf) is held to its smallest (largest) normal
        # number, which still draws the likeliest word (any word), as the limit should.
        temperature = tf.clip_by_value(tf.cast(self.temperature, tf.float32), _FLOAT32_TINY, tf.float32.max)
        base_seed = tf.stack([tf.cast(self.seed, tf.int64), tf.constant(0, tf.int64)])

        def draw(t, log_probs):
            step_seed = tf.random.experimental.stateless_fold_in(base_seed, tf.cast(t, tf.int64))
            # From the masked log-probabilities: special tokens are never drawn, and
            # at the last slot only <end> can be.
            if self.top_k is not None:
                k = tf.minimum(self.top_k, tf.shape(log_probs)[-1])
                kth = tf.math.top_k(log_probs, k).values[:, -1:]
                log_probs = tf.where(log_probs < kth, float("-inf"), log_probs)
            # Shifted so the likeliest word is at 0: divided by a tiny temperature
            # it stays finite where the others overflow to -inf.
            shifted = log_probs - tf.reduce_max(log_probs, axis=-1, keepdims=True)
            return tf.random.stateless_categorical(shifted / temperature, 1, seed=step_seed, dtype=tf.int32)[:, 0]

        return word_by_word(decoder, encoded, max_length, draw)
