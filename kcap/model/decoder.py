"""The GRU decoder with Bahdanau attention over the encoded image."""

from __future__ import annotations

import keras
from keras import ops

from kcap.model.attention import BahdanauAttention


@keras.saving.register_keras_serializable(package="kcap")
class AttentionDecoder(keras.layers.Layer):
    """Show-Attend-and-Tell decoder: at each step attend, then update a GRU.

    One step: `context = attend(features, state)`;
    `state = GRU([embed(token), context], state)`;
    `logits = W_out relu(W_h [state, context])`.
    The initial state comes from the mean of the encoded locations.

    `call` runs teacher forcing over whole captions; `start` and `step`
    drive decoding one token at a time.

    Example:

    >>> decoder = AttentionDecoder(vocabulary_size=50, embedding_dim=16, units=32)
    >>> features = keras.random.normal((2, 9, 16))
    >>> logits, attention = decoder(keras.ops.ones((2, 5), "int32"), features)
    >>> tuple(logits.shape), tuple(attention.shape)
    ((2, 5, 50), (2, 5, 9))
    """

    def __init__(
        self,
        vocabulary_size: int,
        embedding_dim: int = 256,
        units: int = 512,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.dropout_rate = dropout
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.attention = BahdanauAttention(units, name="attention")
        self.initial_state = keras.layers.Dense(units, activation="tanh", name="initial_state")
        self.cell = keras.layers.GRUCell(units, name="gru")
        self.hidden = keras.layers.Dense(units, activation="relu", name="hidden")
        self.logits = keras.layers.Dense(vocabulary_size, name="logits")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, tokens_shape=None, features_shape=None):
        features_shape = features_shape or (None, None, self.embedding_dim)
        feature_dim = features_shape[-1]
        # `start` and `step` may have built some of these already (decoding without a teacher-forced call).
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

    def start(self, features):
        """Initial GRU state and the attention keys for encoded `features`."""
        state = self.initial_state(ops.mean(features, axis=1))
        keys = self.attention.project_features(features)
        return state, keys

    def _recur(self, state, embedded, features, keys, training=False):
        context, weights = self.attention(features, keys, state)
        inputs = ops.concatenate([embedded, context], axis=-1)
        state, _ = self.cell(inputs, [state], training=training)
        return state, context, weights

    def output(self, states, contexts, training=False):
        """Logits from GRU states and attention contexts (any leading shape)."""
        hidden = self.hidden(ops.concatenate([states, contexts], axis=-1))
        return self.logits(self.dropout(hidden, training=training))

    def step(self, tokens, state, features, keys):
        """One decoding step: (batch,) tokens → logits, new state, attention weights."""
        embedded = self.embedding(tokens)
        state, context, weights = self._recur(state, embedded, features, keys)
        logits = self.output(state, context)
        return logits, state, weights

    def call(self, tokens, features, training=False):
        """Teacher forcing: (batch, time) input tokens → (batch, time, vocab) logits."""
        states, contexts, weights = self.teacher_forced_states(tokens, features, training)
        return self.output(states, contexts, training), weights

    def teacher_forced_states(self, tokens, features, training=False):
        """Teacher forcing up to the output layers: GRU states (batch, time, units),
        contexts (batch, time, channels) and attention weights (batch, time, locations).

        For a loss over some positions only, `output` of just those costs less
        than all the logits: at a 5,000-word vocabulary the logits are the
        largest matrix product of a training step.
        """
        state, keys = self.start(features)
        embedded = self.dropout(self.embedding(tokens), training=training)

        def recur(carry, embedded_t):
            step = self._recur(carry[0], embedded_t, features, keys, training)
            return step, step

        # keras.ops.scan wants outputs shaped like the carry: (state, context, weights).
        batch = ops.shape(features)[0]
        init = (
            state,
            ops.zeros((batch, features.shape[-1]), features.dtype),
            ops.zeros((batch, ops.shape(features)[1]), features.dtype),
        )
        _, outputs = ops.scan(recur, init, ops.transpose(embedded, (1, 0, 2)))
        return tuple(ops.transpose(output, (1, 0, 2)) for output in outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "dropout": self.dropout_rate,
        }
