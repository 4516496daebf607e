"""The GRU decoder with Bahdanau attention over the encoded image: `--decoder gru_attention`."""

from __future__ import annotations

import keras
from keras import ops

from kcap.model.attention import BahdanauAttention
from kcap.model.decoders.base import Decoder
from kcap.model.decoders.registry import register_decoder


@register_decoder("gru_attention")
@keras.saving.register_keras_serializable(package="kcap")
class AttentionDecoder(Decoder):
    """Show-Attend-and-Tell decoder: at each step attend, then update a GRU.

    One step: `context = attend(features, state)`;
    `state = GRU([embed(token), context], state)`;
    `logits = W_out relu(W_h [state, context])`.
    The initial state comes from the mean of the encoded locations.

    The memory is the encoded locations and their attention keys
    (`BahdanauAttention.project_features`); the state is the GRU's
    (batch, units); the teacher-forced outputs are `[state, context]`.

    Example:

    >>> decoder = AttentionDecoder(vocabulary_size=50, embedding_dim=16, units=32)
    >>> features = keras.random.normal((2, 9, 16))
    >>> logits, attention = decoder(keras.ops.ones((2, 5), "int32"), features)
    >>> tuple(logits.shape), tuple(attention.shape)
    ((2, 5, 50), (2, 5, 9))
    """

    def __init__(self, vocabulary_size: int, embedding_dim: int = 256, units: int = 512, dropout: float = 0.0, **kwargs):
        super().__init__(vocabulary_size, embedding_dim, units, dropout, **kwargs)
        # The attribute names are the weights' paths in saved .keras files.
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.attention = BahdanauAttention(units, name="attention")
        self.initial_state = keras.layers.Dense(units, activation="tanh", name="initial_state")
        self.cell = keras.layers.GRUCell(units, name="gru")
        self.hidden = keras.layers.Dense(units, activation="relu", name="hidden")
        self.logits = keras.layers.Dense(vocabulary_size, name="logits")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, tokens_shape=None, encoded_shape=None):
        feature_dim = (encoded_shape or (None, None, self.embedding_dim))[-1]
        # Decoding without a teacher-forced call may have built some of these already.
        for layer, shapes in (
            (self.embedding, [(None, None)]),
            (self.attention, [(None, None, feature_dim), (None, self.units)]),
            (self.initial_state, [(None, feature_dim)]),
            (self.cell, [(None, self.embedding_dim + feature_dim)]),
            (self.hidden, [(None, None, self.units + feature_dim)]),
            (self.logits, [(None, None, self.units)]),
        ):
            if not layer.built:
                layer.build(*shapes)
        self.built = True

    def prepare(self, encoded):
        return {"features": encoded, "keys": self.attention.project_features(encoded)}

    def start(self, memory, max_length=None):
        return self.initial_state(ops.mean(memory["features"], axis=1))

    def _recur(self, state, embedded, memory, training=False):
        context, weights = self.attention(memory["features"], memory["keys"], state)
        inputs = ops.concatenate([embedded, context], axis=-1)
        state, _ = self.cell(inputs, [state], training=training)
        return state, context, weights

    def step(self, tokens, state, memory):
        embedded = self.embedding(tokens)
        state, context, weights = self._recur(state, embedded, memory)
        logits = self.output_logits(ops.concatenate([state, context], axis=-1))
        return logits, state, weights

    def teacher_forced(self, tokens, encoded, training=False):
        memory = self.prepare(encoded)
        state = self.start(memory)
        embedded = self.dropout(self.embedding(tokens), training=training)

        def recur(carry, embedded_t):
            step = self._recur(carry[0], embedded_t, memory, training)
            return step, step

        # keras.ops.scan wants outputs shaped like the carry: (state, context, weights).
        batch = ops.shape(encoded)[0]
        init = (
            state,
            ops.zeros((batch, encoded.shape[-1]), encoded.dtype),
            ops.zeros((batch, ops.shape(encoded)[1]), encoded.dtype),
        )
        _, outputs = ops.scan(recur, init, ops.transpose(embedded, (1, 0, 2)))
        states, contexts, weights = (ops.transpose(output, (1, 0, 2)) for output in outputs)
        return ops.concatenate([states, contexts], axis=-1), weights

    def output_logits(self, outputs, training=False):
        hidden = self.hidden(outputs)
        return self.logits(self.dropout(hidden, training=training))
