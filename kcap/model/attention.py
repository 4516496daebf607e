"""Bahdanau (additive) attention over the locations of a feature map, and Show, Attend and Tell's regulariser of it."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kcap")
class BahdanauAttention(keras.layers.Layer):
    """Additive attention: `score = v . tanh(W1 features + W2 state)`.

    The feature projection `W1 features` does not depend on the decoder state,
    so `project_features` computes it once per image and `call` reuses it at
    every decoding step.

    Example:

    >>> attention = BahdanauAttention(units=64)
    >>> features = keras.random.normal((2, 36, 32))
    >>> keys = attention.project_features(features)
    >>> context, weights = attention(features, keys, keras.random.normal((2, 48)))
    >>> tuple(context.shape), tuple(weights.shape)
    ((2, 32), (2, 36))
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.feature_projection = keras.layers.Dense(units, name="feature_projection")
        self.state_projection = keras.layers.Dense(units, name="state_projection")
        self.score = keras.layers.Dense(1, name="score")

    def build(self, features_shape, state_shape=None):
        # `project_features` may have built the feature projection already.
        for layer, shape in (
            (self.feature_projection, features_shape),
            (self.state_projection, state_shape or (None, self.units)),
            (self.score, (None, None, self.units)),
        ):
            if not layer.built:
                layer.build(shape)
        self.built = True

    def project_features(self, features):
        """`W1 features`, shape (batch, locations, units)."""
        return self.feature_projection(features)

    def call(self, features, keys, state):
        """Returns the context vector (batch, channels) and the weights (batch, locations)."""
        query = self.state_projection(state)[:, None, :]
        scores = ops.squeeze(self.score(ops.tanh(keys + query)), axis=-1)
        weights = ops.softmax(scores, axis=-1)
        context = ops.sum(features * weights[..., None], axis=1)
        return context, weights

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def doubly_stochastic_penalty(weights, mask):
    """Show, Attend and Tell's attention regulariser per caption: `sum_i (1 - sum_t weights[t, i])^2`.

    It asks every location to get about as much attention over a caption as
    any other (Xu et al., 2015, section 4.2.1). `weights` (batch, time,
    locations) are each word position's attention; `mask` (batch, time) is
    true at the caption's words, so padding adds no attention.

    Example:

    >>> weights = keras.ops.convert_to_tensor([[[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]])
    >>> mask = keras.ops.convert_to_tensor([[True, True, False]])
    >>> [round(float(x), 6) for x in doubly_stochastic_penalty(weights, mask)]  # (1 - 1.5)^2 + (1 - 0.5)^2
    [0.5]
    """
    weights = ops.cast(weights, "float32") * ops.cast(mask, "float32")[..., None]
    return ops.sum(ops.square(1.0 - ops.sum(weights, axis=1)), axis=-1)
