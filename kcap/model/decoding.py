"""Turning an encoded image into token ids: greedy decoding, compiled, batched."""

from __future__ import annotations

import tensorflow as tf

from kcap.text.vocabulary import END_ID, PAD_ID, START_ID


def greedy_decode(decoder, encoded, max_length):
    """Picks the most likely word at each step until `<end>` or `max_length` words.

    Args:
        decoder: a `kcap.model.AttentionDecoder`.
        encoded: encoded image locations, (batch, locations, embedding_dim).
        max_length: most words per caption (an int32 scalar tensor).

    Returns `(token_ids, attention, scores)`: int32 (batch, max_length + 1)
    with `<end>` and then 0s after the last word; float32 attention weights
    (batch, max_length + 1, locations), zero after `<end>`; and the summed
    log-probability of each caption, `<end>` included.

    The loop is a `tf.while_loop`, so inside a `tf.function` no Python runs
    per token, and it stops as soon as every caption has ended.
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
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        next_tokens = tf.cast(tf.argmax(log_probs, axis=-1), tf.int32)
        scores += tf.where(finished, 0.0, tf.reduce_max(log_probs, axis=-1))
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
    ids = tf.transpose(ids.stack(), (1, 0))
    attention = tf.transpose(attention.stack(), (1, 0, 2))
    # Every caption ended before max_length: pad to the fixed length.
    pad = steps - t
    ids = tf.pad(ids, [[0, 0], [0, pad]])
    attention = tf.pad(attention, [[0, 0], [0, pad], [0, 0]])
    return ids, attention, scores
