"""Beam search: the `beam_size` best partial captions per image, ranked with a length penalty."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from kcap.model.samplers.base import (
    DEFAULT_LENGTH_PENALTY,
    Decoded,
    Sampler,
    block_repeated_ngrams,
    check_no_repeat_ngram,
    masked_log_probs,
    penalty,
)
from kcap.text.vocabulary import END_ID, PAD_ID, START_ID

if TYPE_CHECKING:
    from kcap.model.decoders import Decoder


class BeamSampler(Sampler):
    """Keeps the `beam_size` best partial captions per image and returns the best finished one.

    The search runs over `batch * beam_size` decoder states, each image
    repeated once per beam. At each step every beam proposes all
    words, and the `beam_size` best candidates per image survive; every
    tensor of the decoder's state follows its beam. Candidates are ranked by
    `log P / length_penalty(length)`, the GNMT normalisation described in
    `kcap.model.samplers.length_penalty`. A finished beam (one that has
    emitted `<end>`) stays in the beam and extends only with padding, at zero
    cost, so its length and score stay fixed.

    The best finished caption of each image is also kept on the side, so a
    beam that is later pushed out of the top `beam_size` is not lost. The
    loop stops when no unfinished beam of any image can beat that image's
    best finished caption. Log-probabilities only fall as words are added, so
    an unfinished beam can reach at most
    `log P / length_penalty(max_length + 1)`. The loop also stops after
    `max_length` words, when `<end>` is forced.

    With `beam_size=1` this is greedy decoding: the ids and scores are the
    same as `GreedySampler`'s (with the same `no_repeat_ngram`).

    Args:
        beam_size: number of partial captions kept per image.
        length_penalty: the GNMT `alpha`, >= 0. 0 ranks by raw log-probability.
        no_repeat_ngram: n > 0 never extends a beam with a word that would
            repeat an n-gram of its caption (`no_repeat_ngram_size` of fairseq
            and Hugging Face; `kcap.model.samplers.base.block_repeated_ngrams`); 0: off.

    Returns `(token_ids, attention, scores)` for the best caption of each image,
    in the convention of `kcap.model.samplers.base`. `scores` is the raw
    log-probability (not length-normalised), as with greedy decoding.
    The attention rows are those of the chosen caption's own history,
    reordered through the beam backpointers.

    Example:

    ```python
    ids, attention, scores = model.generate(inputs, BeamSampler(beam_size=5, length_penalty=1.0))
    ids, attention, scores = model.generate(inputs, BeamSampler(beam_size=3, no_repeat_ngram=3))
    ```
    """

    TENSORS = {"length_penalty": tf.float32}

    def __init__(
        self, beam_size: int = 3, length_penalty: float | tf.Tensor = DEFAULT_LENGTH_PENALTY, no_repeat_ngram: int = 0
    ):
        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}.")
        if not tf.is_tensor(length_penalty) and not (math.isfinite(length_penalty) and length_penalty >= 0):
            # A negative alpha would favour short captions and break the stopping bound.
            raise ValueError(f"length_penalty must be a number >= 0, got {length_penalty}.")
        check_no_repeat_ngram(no_repeat_ngram)
        self.beam_size = beam_size
        self.length_penalty = length_penalty
        self.no_repeat_ngram = no_repeat_ngram

    def get_config(self) -> dict[str, Any]:
        config = {"beam_size": self.beam_size, "length_penalty": self.length_penalty}
        # Only when on: off, the sampler is the one it was before the guard existed.
        return {**config, "no_repeat_ngram": self.no_repeat_ngram} if self.no_repeat_ngram else config

    def __call__(self, decoder: Decoder, encoded: tf.Tensor, max_length: tf.Tensor | int) -> Decoded:
        ids, attention, scores = self._search(decoder, encoded, max_length, keep=1)
        return ids[:, 0], attention[:, 0], scores[:, 0]

    def candidates(self, decoder: Decoder, encoded: tf.Tensor, max_length: tf.Tensor | int) -> Decoded:
        """Up to `beam_size` finished captions per image, best first; `__call__`'s caption is the first.

        The search is `__call__`'s, step for step, but goes on until no
        unfinished beam can enter the `beam_size` best finished captions met
        on the way (not just beat the best). An image with fewer finished
        captions (after `max_length` words) has slots of score `-inf` (and
        ids 0) at the end.
        """
        return self._search(decoder, encoded, max_length, keep=self.beam_size)

    def _search(self, decoder: Decoder, encoded: tf.Tensor, max_length: tf.Tensor | int, keep: int) -> Decoded:
        """Beam search keeping the `keep` best finished captions of each image: ids (batch, keep, steps),
        attention (batch, keep, steps, locations), raw scores (batch, keep), best first."""
        k = self.beam_size
        alpha = tf.cast(self.length_penalty, tf.float32)
        batch = tf.shape(encoded)[0]
        locations = tf.shape(encoded)[1]
        steps = max_length + 1
        neg_inf = tf.constant(float("-inf"), tf.float32)

        # Beams of one image are adjacent: row b * k + j is beam j of image b. The
        # images are repeated before `prepare`, not its memory after: a matrix
        # product's last bits can depend on its number of rows, and beam search's
        # captions and scores stay those it gave before decoders had a `prepare`.
        memory = decoder.prepare(tf.repeat(encoded, k, axis=0))
        state = decoder.start(memory, max_length)
        tokens = tf.fill([batch * k], START_ID)
        # At first all beams of an image are the same <start>. Only beam 0 may
        # propose words, or the first step would pick one word k times.
        raw = tf.tile(tf.concat([[0.0], tf.fill([k - 1], neg_inf)], 0), [batch])
        lengths = tf.zeros([batch * k], tf.int32)
        finished = tf.zeros([batch * k], tf.bool)
        # Histories are dense and are regathered through the backpointers every step.
        ids = tf.zeros([batch * k, steps], tf.int32)
        attention = tf.zeros([batch * k, steps, locations], tf.float32)
        # The `keep` best finished captions of each image so far, best first.
        best_ids = tf.zeros([batch, keep, steps], tf.int32)
        best_attention = tf.zeros([batch, keep, steps, locations], tf.float32)
        best_raw = tf.fill([batch, keep], neg_inf)
        best_norm = tf.fill([batch, keep], neg_inf)
        positions = tf.range(steps)
        # Row of each image's first beam. Made here, not in the loop body: there `batch`
        # is a captured tensor with no known value, and with one image the rows' shape
        # (None,) against the states' (k,) broke the loop's shape check.
        first_beam = tf.range(batch) * k

        def body(t, tokens, state, raw, lengths, finished, ids, attention,
                 best_ids, best_attention, best_raw, best_norm):
            logits, new_state, weights = decoder.step(tokens, state, memory)
            log_probs = masked_log_probs(logits, tf.equal(t, steps - 1))
            if self.no_repeat_ngram:
                # `ids` are still the beams' own histories here, row for row.
                log_probs = block_repeated_ngrams(log_probs, ids, t, self.no_repeat_ngram)
            vocabulary = tf.shape(log_probs)[-1]
            # A finished beam extends only with padding, at zero cost.
            pad_only = tf.where(tf.equal(tf.range(vocabulary), PAD_ID), 0.0, neg_inf)[None, :]
            log_probs = tf.where(finished[:, None], pad_only, log_probs)
            candidate_raw = raw[:, None] + log_probs  # (batch * k, vocabulary)
            candidate_length = tf.where(finished, lengths, t + 1)
            candidate_norm = candidate_raw / penalty(candidate_length, alpha)[:, None]

            # The k best of each image's k * vocabulary candidates.
            _, flat_index = tf.math.top_k(tf.reshape(candidate_norm, [batch, k * vocabulary]), k)
            parent = flat_index // vocabulary + first_beam[:, None]
            parent = tf.reshape(parent, [-1])
            word = tf.reshape(flat_index % vocabulary, [-1])
            raw = tf.gather(tf.reshape(candidate_raw, [-1]), parent * vocabulary + word)

            was_finished = tf.gather(finished, parent)
            word = tf.where(was_finished, PAD_ID, word)
            lengths = tf.where(was_finished, tf.gather(lengths, parent), t + 1)
            state = tf.nest.map_structure(lambda s: tf.gather(s, parent), new_state)
            step_weights = tf.where(was_finished[:, None], 0.0, tf.gather(tf.cast(weights, tf.float32), parent))
            at_t = tf.equal(positions, t)
            ids = tf.where(at_t[None, :], word[:, None], tf.gather(ids, parent))
            attention = tf.where(at_t[None, :, None], step_weights[:, None, :], tf.gather(attention, parent))
            finished = was_finished | tf.equal(word, END_ID)

            # Keep the best finished captions of each image on the side. A beam enters once, on the
            # step it ends; ranked after those kept (top_k is stable), so ties keep the earlier caption.
            just_finished = finished & tf.logical_not(was_finished)
            norm = tf.reshape(tf.where(just_finished, raw / penalty(lengths, alpha), neg_inf), [batch, k])
            best_norm, top = tf.math.top_k(tf.concat([best_norm, norm], axis=1), keep)

            def kept(best, current):
                current = tf.reshape(current, tf.concat([[batch, k], tf.shape(current)[1:]], 0))
                return tf.gather(tf.concat([best, current], axis=1), top, batch_dims=1)

            best_ids = kept(best_ids, ids)
            best_attention = kept(best_attention, attention)
            best_raw = kept(best_raw, raw)
            return (t + 1, word, state, raw, lengths, finished, ids, attention,
                    best_ids, best_attention, best_raw, best_norm)

        def cond(t, tokens, state, raw, lengths, finished, ids, attention,
                 best_ids, best_attention, best_raw, best_norm):
            # The most an unfinished beam can still reach (see the docstring).
            reachable = tf.where(finished, neg_inf, raw / penalty(steps, alpha))
            reachable = tf.reduce_max(tf.reshape(reachable, [batch, k]), axis=-1)
            # Settled when no unfinished beam can enter the `keep` best: the best alone for
            # `__call__`. Until `keep` captions have finished the last is -inf, and the search goes on.
            last_kept = best_norm[:, keep - 1]
            settled = tf.logical_or(
                tf.reduce_all(tf.reshape(finished, [batch, k]), axis=-1),
                tf.logical_and(last_kept > neg_inf, last_kept >= reachable),
            )
            return tf.logical_and(t < steps, tf.logical_not(tf.reduce_all(settled)))

        loop_vars = (0, tokens, state, raw, lengths, finished, ids, attention,
                     best_ids, best_attention, best_raw, best_norm)
        results = tf.while_loop(cond, body, loop_vars)
        best_ids, best_attention, best_raw = results[8], results[9], results[10]
        return best_ids, best_attention, best_raw
