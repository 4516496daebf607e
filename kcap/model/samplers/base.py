"""What every sampler shares: the return convention, the word-by-word loop and the masking.

A sampler turns encoded images into token ids with a `kcap.model.decoders.Decoder`.
Every sampler is batched, runs a `tf.while_loop` (inside a `tf.function` no
Python runs per token) and returns `(token_ids, attention, scores)`:

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

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from kcap.text.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID

if TYPE_CHECKING:
    from kcap.model.decoders import Decoder

Decoded = tuple[tf.Tensor, tf.Tensor, tf.Tensor]  # (token_ids, attention, scores)

DEFAULT_LENGTH_PENALTY = 0.7


class Sampler:
    """Base class of the samplers: `sampler(decoder, encoded, max_length) -> (ids, attention, scores)`.

    A sampler's settings are either structural (a beam size: a new value is
    a new graph) or numbers (a temperature, a seed: `TENSORS` names them
    with their dtypes). `Captioner.generate` traces one function per
    `trace_key` and passes the numbers in as tensors, so a new temperature
    or seed runs the same graph.

    A subclass implements `__call__`, taking its numbers from `self` (they
    may be tensors there), and `get_config`, which holds every setting.

    Example:

    ```python
    # Uncompiled; `Captioner.generate(inputs, sampler)` compiles the same loop.
    ids, attention, scores = BeamSampler(beam_size=3)(model.decoder, model.encode(inputs), 20)
    ```
    """

    # The numeric settings, by name, and the dtype each is passed to a compiled function in.
    TENSORS: dict[str, tf.DType] = {}
    # Whether `Captioner.generate` may compile the loop with XLA.
    jit_compile = True

    def __call__(self, decoder: Decoder, encoded: tf.Tensor, max_length: tf.Tensor | int) -> Decoded:
        raise NotImplementedError

    def candidates(self, decoder: Decoder, encoded: tf.Tensor, max_length: tf.Tensor | int) -> Decoded:
        """The captions found for each image, best first, with a candidate axis after the batch's.

        `(token_ids, attention, scores)` of shapes (batch, n, ...): the sampler's
        caption and, for a sampler that finds several (beam search), the others.
        Here one: the caption `__call__` returns.

        Example:

        ```python
        ids, attention, scores = BeamSampler(beam_size=3).candidates(model.decoder, model.encode(inputs), 20)
        ```
        """
        ids, attention, scores = self(decoder, encoded, max_length)
        return ids[:, None], attention[:, None], scores[:, None]

    def get_config(self) -> dict[str, Any]:
        return {}

    def trace_key(self) -> Hashable:
        """What a traced function of this sampler is specific to: its class and structural settings."""
        config = self.get_config()
        return (type(self), tuple(sorted((k, v) for k, v in config.items() if k not in self.TENSORS)))

    def tensors(self) -> dict[str, tf.Tensor]:
        """The numeric settings as tensors, for a compiled function's arguments."""
        config = self.get_config()
        return {name: tf.constant(config[name], dtype) for name, dtype in self.TENSORS.items()}

    def with_tensors(self, tensors: dict[str, tf.Tensor]) -> Sampler:
        """The same sampler with its numeric settings replaced by `tensors` (inside a compiled function)."""
        return type(self)(**{**self.get_config(), **tensors})

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({settings})"


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
    return penalty(lengths, tf.cast(alpha, tf.float32))


def penalty(lengths, alpha):
    """`length_penalty` for a float32 `alpha`, as beam search computes it in its loop."""
    return tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, alpha)


def caption_lengths(token_ids: tf.Tensor) -> tf.Tensor:
    """Tokens in each decoded caption, `<end>` included: the position of `<end>` + 1.

    Example:

    >>> int(caption_lengths([[7, 9, END_ID, 0, 0]])[0])
    3
    """
    token_ids = tf.convert_to_tensor(token_ids)
    # The first <end>; every row of a sampler's output has one (see above).
    return tf.argmax(tf.cast(tf.equal(token_ids, END_ID), tf.int32), axis=-1, output_type=tf.int32) + 1


def masked_log_probs(logits: tf.Tensor, is_last: tf.Tensor) -> tf.Tensor:
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


def check_no_repeat_ngram(no_repeat_ngram: int) -> None:
    """Refuses a `no_repeat_ngram` that is not an integer >= 0 (0: off)."""
    if isinstance(no_repeat_ngram, bool) or not isinstance(no_repeat_ngram, int) or no_repeat_ngram < 0:
        raise ValueError(f"no_repeat_ngram must be an integer >= 0 (0: off), got {no_repeat_ngram!r}.")


def block_repeated_ngrams(log_probs: tf.Tensor, ids: tf.Tensor, t: tf.Tensor, n: int) -> tf.Tensor:
    """`log_probs` with -inf for every word that would repeat an `n`-gram its caption already holds.

    `ids` (rows, steps) holds each row's words at positions `0 .. t - 1`
    (later positions are ignored); `log_probs` (rows, vocabulary) are the
    candidates for position `t`. A word is blocked where the caption's last
    `n - 1` words followed by it already occur in the caption, as
    `no_repeat_ngram_size` does in fairseq and Hugging Face. Every shape is
    static for a fixed `steps`, so XLA compiles it inside the loop.

    Example:

    >>> ids = tf.constant([[7, 8, 7, 0]])  # "a dog a", next word at position 3
    >>> blocked = block_repeated_ngrams(tf.zeros([1, 10]), ids, tf.constant(3), 2)
    >>> [int(word) for word in tf.where(tf.math.is_inf(blocked[0]))[:, 0]]
    [8]
    """
    rows, steps = tf.shape(ids)[0], tf.shape(ids)[1]

    def from_position(j):
        """`ids[:, i + j]` at each position `i`, -1 past the end."""
        return tf.concat([ids[:, j:], tf.fill([rows, j], -1)], axis=1)

    # An n-gram starts at each position i with i + n <= t, and is repeated where its
    # first n - 1 words are the caption's last n - 1.
    repeated = tf.broadcast_to((tf.range(steps) + n <= t)[None, :], tf.shape(ids))
    for j in range(n - 1):
        last = tf.gather(ids, tf.maximum(t - n + 1 + j, 0), axis=1)
        repeated &= tf.equal(from_position(j), last[:, None])
    vocabulary = tf.shape(log_probs)[-1]
    # The word that would complete each n-gram (clipped: scatter_nd refuses an index
    # out of range even where nothing is added).
    word = tf.clip_by_value(from_position(n - 1), 0, vocabulary - 1)
    row = tf.broadcast_to(tf.range(rows)[:, None], tf.shape(ids))
    index = tf.reshape(tf.stack([row, word], axis=-1), [-1, 2])
    hits = tf.scatter_nd(index, tf.reshape(tf.cast(repeated, tf.int32), [-1]), tf.shape(log_probs))
    return tf.where(hits > 0, float("-inf"), log_probs)


def word_by_word(
    decoder: Decoder,
    encoded: tf.Tensor,
    max_length: tf.Tensor | int,
    pick: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    no_repeat_ngram: int = 0,
) -> Decoded:
    """The loop of greedy decoding and sampling: one word per step for every caption.

    `pick(t, log_probs)` chooses step `t`'s words from the masked
    log-probabilities (batch, vocabulary); at the last slot they allow only
    `<end>`. With `no_repeat_ngram` n > 0 they also leave out every word that
    would repeat an n-gram of the caption (`block_repeated_ngrams`). The loop
    stops as soon as every caption has ended.
    """
    memory = decoder.prepare(encoded)
    state = decoder.start(memory, max_length)
    batch = tf.shape(encoded)[0]
    steps = max_length + 1  # words, then <end>
    tokens = tf.fill([batch], START_ID)
    finished = tf.zeros([batch], tf.bool)
    scores = tf.zeros([batch], tf.float32)
    ids = tf.TensorArray(tf.int32, size=steps)
    attention = tf.TensorArray(tf.float32, size=steps)
    # The words so far, dense, for the n-gram guard (unused without it).
    history = tf.zeros([batch, steps], tf.int32)

    def body(t, tokens, state, finished, scores, ids, attention, history):
        logits, state, weights = decoder.step(tokens, state, memory)
        log_probs = masked_log_probs(logits, tf.equal(t, steps - 1))
        if no_repeat_ngram:
            log_probs = block_repeated_ngrams(log_probs, history, t, no_repeat_ngram)
        next_tokens = pick(t, log_probs)
        chosen = tf.gather(log_probs, next_tokens, axis=1, batch_dims=1)
        scores += tf.where(finished, 0.0, chosen)
        next_tokens = tf.where(finished, PAD_ID, next_tokens)
        weights = tf.where(finished[:, None], 0.0, tf.cast(weights, tf.float32))
        ids = ids.write(t, next_tokens)
        attention = attention.write(t, weights)
        finished = finished | tf.equal(next_tokens, END_ID)
        if no_repeat_ngram:
            history = tf.where(tf.equal(tf.range(steps), t)[None, :], next_tokens[:, None], history)
        return t + 1, next_tokens, state, finished, scores, ids, attention, history

    def cond(t, tokens, state, finished, scores, ids, attention, history):
        return tf.logical_and(t < steps, tf.logical_not(tf.reduce_all(finished)))

    t, _, _, _, scores, ids, attention, _ = tf.while_loop(
        cond, body, (0, tokens, state, finished, scores, ids, attention, history)
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
