"""Turning an encoded image into token ids: greedy, beam search and sampling.

All three decoders are batched, run a `tf.while_loop` (inside a `tf.function`
no Python runs per token) and share one return convention:

- `token_ids`: int32 (batch, max_length + 1). The words, then `<end>`, then 0s.
- `attention`: float32 (batch, max_length + 1, locations). Row `t` holds the
  attention weights of the step that emitted token `t` (each sums to 1),
  and rows after `<end>` are 0.
- `scores`: float32 (batch,). The model's log-probability of the caption,
  `<end>` included: the sum of `log softmax(logits)` of the emitted tokens.

**Length limit.** A caption has at most `max_length` words. If a caption
has not ended after `max_length` words, `<end>` is forced in the last slot
(index `max_length`). Its real log-probability is still added to the score,
so a caption that was cut short gets a low score rather than a flattering
one. Because of this, every row of `token_ids` holds exactly one `<end>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from kcap.text.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID

_FLOAT32_TINY = 1.1754944e-38  # numpy.finfo("float32").tiny

if TYPE_CHECKING:
    from kcap.model.decoder import AttentionDecoder

Decoded = tuple[tf.Tensor, tf.Tensor, tf.Tensor]  # (token_ids, attention, scores)

DEFAULT_LENGTH_PENALTY = 0.7


def length_penalty(lengths: tf.Tensor | int, alpha: float | tf.Tensor = DEFAULT_LENGTH_PENALTY) -> tf.Tensor:
    """GNMT length penalty `((5 + length) / 6) ** alpha` (Wu et al., 2016).

    Beam search ranks captions of different lengths by
    `score / length_penalty(length)`, where `length` counts the words plus
    `<end>`. Summed log-probabilities fall with every word, so comparing them
    directly favours short captions. `alpha = 0` compares raw
    log-probabilities, and a larger `alpha` favours longer captions.

    Example:

    >>> float(length_penalty(1, 0.7))
    1.0
    >>> round(float(length_penalty(7, 0.7)), 3)
    1.625
    """
    return _penalty(lengths, tf.cast(alpha, tf.float32))


def caption_lengths(token_ids: tf.Tensor) -> tf.Tensor:
    """Tokens in each decoded caption, `<end>` included: the position of `<end>` + 1.

    Example:

    >>> int(caption_lengths([[7, 9, END_ID, 0, 0]])[0])
    3
    """
    token_ids = tf.convert_to_tensor(token_ids)
    # The first <end>; every row of a decoder's output has one (see above).
    return tf.argmax(tf.cast(tf.equal(token_ids, END_ID), tf.int32), axis=-1, output_type=tf.int32) + 1


def _log_probs(logits, is_last):
    """Log-softmax over the vocabulary, special tokens other than `<end>` excluded.

    At the last slot only `<end>` may be chosen.

    At the last slot the other words are set to -inf, but `<end>` keeps its
    real log-probability (it is not renormalised), so the score of a forced
    `<end>` still says how unlikely the model thought it was.
    """
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    # <pad>, <start> and <unk> are never words of a caption; <unk> would read "a <unk> <unk>".
    ids = tf.range(tf.shape(log_probs)[-1])
    never = (tf.equal(ids, PAD_ID) | tf.equal(ids, START_ID) | tf.equal(ids, UNK_ID))[None, :]
    log_probs = tf.where(never, float("-inf"), log_probs)
    only_end = tf.equal(ids, END_ID)[None, :]
    masked = tf.where(only_end, log_probs, float("-inf"))
    return tf.where(is_last, masked, log_probs)


def greedy_decode(decoder: AttentionDecoder, encoded: tf.Tensor, max_length: tf.Tensor | int) -> Decoded:
    """Picks the most likely word at each step until `<end>` or `max_length` words.

    Args:
        decoder: a `kcap.model.AttentionDecoder`.
        encoded: encoded image locations, (batch, locations, embedding_dim).
        max_length: most words per caption (an int32 scalar tensor).

    Returns `(token_ids, attention, scores)`, in the convention described in
    the module docstring. The loop stops as soon as every caption has ended.

    Example:

    ```python
    ids, attention, scores = greedy_decode(model.decoder, model.encode(inputs), tf.constant(20))
    ```
    """
    return _decode_word_by_word(
        decoder, encoded, max_length, lambda t, log_probs: tf.argmax(log_probs, axis=-1, output_type=tf.int32)
    )


def _decode_word_by_word(decoder, encoded, max_length, pick) -> Decoded:
    """The loop shared by greedy decoding and sampling: one word per step for every caption.

    `pick(t, log_probs)` chooses step `t`'s words from the masked
    log-probabilities (batch, vocabulary); at the last slot they allow only
    `<end>`. The loop stops as soon as every caption has ended.
    """
    state, keys = decoder.start(encoded)
    batch = tf.shape(encoded)[0]
    steps = max_length + 1  # words, then <end>
    tokens = tf.fill([batch], START_ID)
    finished = tf.zeros([batch], tf.bool)
    scores = tf.zeros([batch], tf.float32)
    ids = tf.TensorArray(tf.int32, size=steps)
    attention = tf.TensorArray(tf.float32, size=steps)

    def body(t, tokens, state, finished, scores, ids, attention):
        logits, state, weights = decoder.step(tokens, state, encoded, keys)
        log_probs = _log_probs(logits, tf.equal(t, steps - 1))
        next_tokens = pick(t, log_probs)
        chosen = tf.gather(log_probs, next_tokens, axis=1, batch_dims=1)
        scores += tf.where(finished, 0.0, chosen)
        next_tokens = tf.where(finished, PAD_ID, next_tokens)
        weights = tf.where(finished[:, None], 0.0, tf.cast(weights, tf.float32))
        ids = ids.write(t, next_tokens)
        attention = attention.write(t, weights)
        finished = finished | tf.equal(next_tokens, END_ID)
        return t + 1, next_tokens, state, finished, scores, ids, attention

    def cond(t, tokens, state, finished, scores, ids, attention):
        return tf.logical_and(t < steps, tf.logical_not(tf.reduce_all(finished)))

    t, _, _, _, scores, ids, attention = tf.while_loop(
        cond, body, (0, tokens, state, finished, scores, ids, attention)
    )
    return _pad_to_steps(ids, attention, t, steps) + (scores,)


def _pad_to_steps(ids, attention, t, steps):
    """TensorArrays (time, batch, ...) → batch-major, with zeros after the `t` steps run.

    A TensorArray of size `steps` stacks to `steps` rows whether or not the
    loop wrote them all; rows from `t` on are zeroed. A mask rather than a
    slice and a pad keeps every shape static, so XLA can compile the loop.
    """
    written = tf.range(steps) < t
    ids = tf.where(written[None, :], tf.transpose(ids.stack(), (1, 0)), 0)
    attention = tf.where(written[None, :, None], tf.transpose(attention.stack(), (1, 0, 2)), 0.0)
    return ids, attention


def sample_decode(
    decoder: AttentionDecoder,
    encoded: tf.Tensor,
    max_length: tf.Tensor | int,
    temperature: float | tf.Tensor,
    seed: int | tf.Tensor,
) -> Decoded:
    """Draws each word from `softmax(logits / temperature)`, reproducibly.

    Random numbers come from a stateless RNG. Step `t` uses
    `fold_in([seed, 0], t)`, so the same seed, inputs and batch always give
    the same captions. The score is the caption's log-probability under the
    model itself (temperature 1), so it can be compared with greedy and beam
    scores. As `temperature` goes to 0 the result approaches greedy decoding.

    Args:
        decoder: a `kcap.model.AttentionDecoder`.
        encoded: encoded image locations, (batch, locations, embedding_dim).
        max_length: most words per caption (an int32 scalar tensor).
        temperature: a positive float. Below 1 it sharpens the distribution;
            above 1 it flattens it.
        seed: an integer seed.

    Example:

    ```python
    ids, attention, scores = sample_decode(model.decoder, model.encode(inputs),
                                           tf.constant(20), temperature=0.8, seed=3)
    ```
    """
    # A temperature float32 rounds to 0 (or inf) is held to its smallest (largest) normal
    # number, which still draws the likeliest word (any word), as the limit should.
    temperature = tf.clip_by_value(tf.cast(temperature, tf.float32), _FLOAT32_TINY, tf.float32.max)
    base_seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])

    def draw(t, log_probs):
        step_seed = tf.random.experimental.stateless_fold_in(base_seed, tf.cast(t, tf.int64))
        # From the masked log-probabilities: special tokens are never drawn, and
        # at the last slot only <end> can be. Shifted so the likeliest word is at 0: divided by
        # a tiny temperature it stays finite where the others overflow to -inf.
        shifted = log_probs - tf.reduce_max(log_probs, axis=-1, keepdims=True)
        return tf.random.stateless_categorical(shifted / temperature, 1, seed=step_seed, dtype=tf.int32)[:, 0]

    return _decode_word_by_word(decoder, encoded, max_length, draw)


def beam_search(
    decoder: AttentionDecoder,
    encoded: tf.Tensor,
    max_length: tf.Tensor | int,
    beam_size: int,
    length_penalty: float | tf.Tensor = DEFAULT_LENGTH_PENALTY,
) -> Decoded:
    """Keeps the `beam_size` best partial captions per image and returns the best finished one.

    The search runs over `batch * beam_size` decoder states. The encoded
    features and attention keys are repeated once per beam. At each step every
    beam proposes all words, and the `beam_size` best candidates per image
    survive. Candidates are ranked by `log P / length_penalty(length)`, the
    GNMT normalisation described in `length_penalty`. A finished beam (one
    that has emitted `<end>`) stays in the beam and extends only with padding,
    at zero cost, so its length and score stay fixed.

    The best finished caption of each image is also kept on the side, so a
    beam that is later pushed out of the top `beam_size` is not lost. The
    loop stops when no unfinished beam of any image can beat that image's
    best finished caption. Log-probabilities only fall as words are added, so
    an unfinished beam can reach at most
    `log P / length_penalty(max_length + 1)`. The loop also stops after
    `max_length` words, when `<end>` is forced.

    With `beam_size=1` this is greedy decoding: the ids and scores are the
    same as `greedy_decode`'s.

    Args:
        decoder: a `kcap.model.AttentionDecoder`.
        encoded: encoded image locations, (batch, locations, embedding_dim).
        max_length: most words per caption (an int32 scalar tensor).
        beam_size: number of partial captions kept per image (a Python int).
        length_penalty: the GNMT `alpha`. 0 ranks by raw log-probability.

    Returns `(token_ids, attention, scores)` for the best caption of each image,
    in the convention described in the module docstring. `scores` is the raw
    log-probability (not length-normalised), as with `greedy_decode`.
    The attention rows are those of the chosen caption's own history,
    reordered through the beam backpointers.

    Example:

    ```python
    ids, attention, scores = beam_search(model.decoder, model.encode(inputs),
                                         tf.constant(20), beam_size=5)
    ```
    """
    beam_size = int(beam_size)
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}.")
    if isinstance(length_penalty, (int, float)) and not length_penalty >= 0:
        # A negative alpha would favour short captions and break the stopping bound.
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}.")
    k = beam_size
    alpha = tf.cast(length_penalty, tf.float32)
    batch = tf.shape(encoded)[0]
    locations = tf.shape(encoded)[1]
    steps = max_length + 1
    neg_inf = tf.constant(float("-inf"), tf.float32)

    # Beams of one image are adjacent: row b * k + j is beam j of image b.
    encoded = tf.repeat(encoded, k, axis=0)
    state, keys = decoder.start(encoded)
    tokens = tf.fill([batch * k], START_ID)
    # At first all beams of an image are the same <start>. Only beam 0 may
    # propose words, or the first step would pick one word k times.
    raw = tf.tile(tf.concat([[0.0], tf.fill([k - 1], neg_inf)], 0), [batch])
    lengths = tf.zeros([batch * k], tf.int32)
    finished = tf.zeros([batch * k], tf.bool)
    # Histories are dense and are regathered through the backpointers every step.
    ids = tf.zeros([batch * k, steps], tf.int32)
    attention = tf.zeros([batch * k, steps, locations], tf.float32)
    # The best finished caption of each image so far.
    best_ids = tf.zeros([batch, steps], tf.int32)
    best_attention = tf.zeros([batch, steps, locations], tf.float32)
    best_raw = tf.fill([batch], neg_inf)
    best_norm = tf.fill([batch], neg_inf)
    positions = tf.range(steps)
    # Row of each image's first beam. Made here, not in the loop body: there `batch`
    # is a captured tensor with no known value, and with one image the rows' shape
    # (None,) against the states' (k,) broke the loop's shape check.
    first_beam = tf.range(batch) * k

    def body(t, tokens, state, raw, lengths, finished, ids, attention,
             best_ids, best_attention, best_raw, best_norm):
        logits, new_state, weights = decoder.step(tokens, state, encoded, keys)
        log_probs = _log_probs(logits, tf.equal(t, steps - 1))
        vocabulary = tf.shape(log_probs)[-1]
        # A finished beam extends only with padding, at zero cost.
        pad_only = tf.where(tf.equal(tf.range(vocabulary), PAD_ID), 0.0, neg_inf)[None, :]
        log_probs = tf.where(finished[:, None], pad_only, log_probs)
        candidate_raw = raw[:, None] + log_probs  # (batch * k, vocabulary)
        candidate_length = tf.where(finished, lengths, t + 1)
        candidate_norm = candidate_raw / _penalty(candidate_length, alpha)[:, None]

        # The k best of each image's k * vocabulary candidates.
        _, flat_index = tf.math.top_k(tf.reshape(candidate_norm, [batch, k * vocabulary]), k)
        parent = flat_index // vocabulary + first_beam[:, None]
        parent = tf.reshape(parent, [-1])
        word = tf.reshape(flat_index % vocabulary, [-1])
        raw = tf.gather(tf.reshape(candidate_raw, [-1]), parent * vocabulary + word)

        was_finished = tf.gather(finished, parent)
        word = tf.where(was_finished, PAD_ID, word)
        lengths = tf.where(was_finished, tf.gather(lengths, parent), t + 1)
        state = tf.gather(new_state, parent)
        step_weights = tf.where(was_finished[:, None], 0.0, tf.gather(tf.cast(weights, tf.float32), parent))
        at_t = tf.equal(positions, t)
        ids = tf.where(at_t[None, :], word[:, None], tf.gather(ids, parent))
        attention = tf.where(at_t[None, :, None], step_weights[:, None, :], tf.gather(attention, parent))
        finished = was_finished | tf.equal(word, END_ID)

        # Keep the best finished caption of each image on the side.
        norm = tf.reshape(tf.where(finished, raw / _penalty(lengths, alpha), neg_inf), [batch, k])
        top = tf.argmax(norm, axis=-1, output_type=tf.int32)
        top_norm = tf.reduce_max(norm, axis=-1)
        rows = first_beam + top
        better = top_norm > best_norm  # strictly: ties keep the earlier caption
        best_ids = tf.where(better[:, None], tf.gather(ids, rows), best_ids)
        best_attention = tf.where(better[:, None, None], tf.gather(attention, rows), best_attention)
        best_raw = tf.where(better, tf.gather(raw, rows), best_raw)
        best_norm = tf.where(better, top_norm, best_norm)
        return (t + 1, word, state, raw, lengths, finished, ids, attention,
                best_ids, best_attention, best_raw, best_norm)

    def cond(t, tokens, state, raw, lengths, finished, ids, attention,
             best_ids, best_attention, best_raw, best_norm):
        # The most an unfinished beam can still reach (see the docstring).
        reachable = tf.where(finished, neg_inf, raw / _penalty(steps, alpha))
        reachable = tf.reduce_max(tf.reshape(reachable, [batch, k]), axis=-1)
        # With no finished caption yet best_norm is -inf, and the search goes on.
        settled = tf.logical_or(
            tf.reduce_all(tf.reshape(finished, [batch, k]), axis=-1),
            tf.logical_and(best_norm > neg_inf, best_norm >= reachable),
        )
        return tf.logical_and(t < steps, tf.logical_not(tf.reduce_all(settled)))

    loop_vars = (0, tokens, state, raw, lengths, finished, ids, attention,
                 best_ids, best_attention, best_raw, best_norm)
    results = tf.while_loop(cond, body, loop_vars)
    best_ids, best_attention, best_raw = results[8], results[9], results[10]
    return best_ids, best_attention, best_raw


def _penalty(lengths, alpha):
    return tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, alpha)
