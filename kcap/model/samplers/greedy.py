"""Greedy decoding: the most likely word at each step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from kcap.model.samplers.base import Decoded, Sampler, word_by_word

if TYPE_CHECKING:
    from kcap.model.decoders import Decoder


class GreedySampler(Sampler):
    """Picks the most likely word at each step until `<end>` or `max_length` words.

    Returns `(token_ids, attention, scores)` in the convention of
    `kcap.model.samplers.base`. The loop stops as soon as every caption has ended.

    Example:

    ```python
    ids, attention, scores = model.generate(inputs, GreedySampler())
    ```
    """

    def __call__(self, decoder: Decoder, encoded: tf.Tensor, max_length: tf.Tensor | int) -> Decoded:
        return word_by_word(
            decoder, encoded, max_length, lambda t, log_probs: tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        )
