"""Greedy decoding: the most likely word at each step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tensorflow as tf

from kcap.model.samplers.base import Decoded, Sampler, check_no_repeat_ngram, word_by_word

if TYPE_CHECKING:
    from kcap.model.decoders import Decoder


class GreedySampler(Sampler):
    """Picks the most likely word at each step until `<end>` or `max_length` words.

    Returns `(token_ids, attention, scores)` in the convention of
    `kcap.model.samplers.base`. The loop stops as soon as every caption has ended.

    Args:
        no_repeat_ngram: n > 0 never picks a word that would repeat an n-gram
            of the caption (`kcap.model.samplers.base.block_repeated_ngrams`); 0: off.

    Example:

    ```python
    ids, attention, scores = model.generate(inputs, GreedySampler())
    ids, attention, scores = model.generate(inputs, GreedySampler(no_repeat_ngram=3))
    ```
    """

    def __init__(self, no_repeat_ngram: int = 0):
        check_no_repeat_ngram(no_repeat_ngram)
        self.no_repeat_ngram = no_repeat_ngram

    def get_config(self) -> dict[str, Any]:
        # Only when on: off, the sampler is the one it was before the guard existed.
        return {"no_repeat_ngram": self.no_repeat_ngram} if self.no_repeat_ngram else {}

    def __call__(self, decoder: Decoder, encoded: tf.Tensor, max_length: tf.Tensor | int) -> Decoded:
        return word_by_word(
            decoder, encoded, max_length, lambda t, log_probs: tf.argmax(log_probs, axis=-1, output_type=tf.int32),
            self.no_repeat_ngram,
        )
