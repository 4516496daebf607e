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
    (batch, units); the teacher-forced outputs are `[state, context]`,
    and the word's embedding after them with `deep_output`.

    Two options of the paper (Xu et al., 2015), both off by default:
    `context_gate` scales the context by a gate of the previous state,
    `context = sigmoid(f_beta(state)) * context` (its section 4.2.1);
    `deep_output` computes the logits from the previous word too,
    `logits = L_o tanh(E y + L_h state + L_z context)` (its eq. 7, with
    the tanh of the authors' code, arctic-captions), in place of
    `W_out relu(W_h [state, context])`.

    Args:
        vocabulary_size: number of words, special tokens included.
        embedding_dim: word embedding size, and the deep output's.
        units: the GRU's and the attention's size.
        dropout: dropout rate on the embeddings and before the logits while training.
        context_gate: gate the context by the previous state.
        deep_output: the paper's deep output layer.

    Example:

    >>> decoder = AttentionDecoder(vocabulary_size=50, embedding_dim=16, units=32)
    >>> features = keras.random.normal((2, 9, 16))
    >>> logits, attention = decoder(keras.ops.ones((2, 5), "int32"), features)
    >>> tuple(logits.shape), tuple(attention.shape)
    ((2, 5, 50), (2, 5, 9))
    """

    # TrainConfig fields that `kcap train` passes to the constructor, by argument.
    TRAIN_OPTIONS = {"context_gate": "context_gate", "deep_output": "deep_output"}

    def __init__(self, *args, context_gate: bool = False, deep_output: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        vocabulary_size, embedding_dim, units = self.vocabulary_size, self.embedding_dim, self.units
        self.use_context_gate = bool(context_gate)
        self.deep_output = bool(deep_output)
        # The attribute names are the weights' paths in saved .keras files. The
        # options' layers exist only where they are on, so a model without them
        # has the weights of models saved before they existed.
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.attention = BahdanauAttention(units, name="attention")
        self.initial_state = keras.layers.Dense(units, activation="tanh", name="initial_state")
        self.cell = keras.layers.GRUCell(units, name="gru")
        if self.use_context_gate:
            self.context_gate = keras.layers.Dense(1, activation="sigmoid", name="context_gate")
        if self.deep_output:
            self.deep_state = keras.layers.Dense(embedding_dim, name="deep_state")
            self.deep_context = keras.layers.Dense(embedding_dim, use_bias=False, name="deep_context")
        else:
            self.hidden = keras.layers.Dense(units, activation="relu", name="hidden")
        self.logits = keras.layers.Dense(vocabulary_size, name="logits")
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, tokens_shape=None, encoded_shape=None):
        feature_dim = (encoded_shape or (None, None, self.embedding_dim))[-1]
        # Decoding without a teacher-forced call may have built some of these already.
        for layer, shapes in (
            (self.embedding, [(None, None)]),
            (self.attention, [(None, None, feature_dim), (None, self.units)]),
            (self.initial_state, [(None, feature_dim)]),
            (self.cell, [(None, self.embedding_dim + feature_dim)]),
            *self._option_layers(feature_dim),
            (self.logits, [(None, None, self.embedding_dim if self.deep_output else self.units)]),
        ):
            if not layer.built:
                layer.build(*shapes)
        self.built = True

    def _option_layers(self, feature_dim):
        """The layers the options add or replace, with their input shapes, in the order `build` builds them."""
        if self.use_context_gate:
            yield self.context_gate, [(None, self.units)]
        if self.deep_output:
            yield self.deep_state, [(None, None, self.units)]
            yield self.deep_context, [(None, None, feature_dim)]
        else:
            yield self.hidden, [(None, None, self.units + feature_dim)]

    def prepare(self, encoded):
        return {"features": encoded, "keys": self.attention.project_features(encoded)}

    def start(self, memory, max_length=None):
        return self.initial_state(ops.mean(memory["features"], axis=1))

    def _recur(self, state, embedded, memory, training=False):
        context, weights = self.attention(memory["features"], memory["keys"], state)
        if self.use_context_gate:
            context = self.context_gate(state) * context
        inputs = ops.concatenate([embedded, context], axis=-1)
        state, _ = self.cell(inputs, [state], training=training)
        return state, context, weights

    def step(self, tokens, state, memory):
        embedded = self.embedding(tokens)
        state, context, weights = self._recur(state, embedded, memory)
        logits = self.output_logits(self._outputs(state, context, embedded))
        return logits, state, weights

    def _outputs(self, states, contexts, embedded):
        """What `output_logits` takes: `[state, context]`, and the previous word's embedding for the deep output."""
        return ops.concatenate([states, contexts, embedded] if self.deep_output else [states, contexts], axis=-1)

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
        return self._outputs(states, contexts, embedded), weights

    def output_logits(self, outputs, training=False):
        if self.deep_output:
            state, context = outputs[..., : self.units], outputs[..., self.units : -self.embedding_dim]
            embedded = outputs[..., -self.embedding_dim :]
            hidden = ops.tanh(embedded + self.deep_state(state) + self.deep_context(context))
        else:
            hidden = self.hidden(outputs)
        return self.logits(self.dropout(hidden, training=training))

    def get_config(self):
        return {**super().get_config(), "context_gate": self.use_context_gate, "deep_output": self.deep_output}
