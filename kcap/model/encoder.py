"""The encoder: a feature map becomes a sequence of location embeddings."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kcap")
class FeatureEncoder(keras.layers.Layer):
    """Flattens (batch, h, w, c) to (batch, h*w, c) and projects with Dense + ReLU.

    Args:
        embedding_dim: size of each location's embedding.
        num_locations: h*w; needed for `position_embedding`.
        position_embedding: add a learned embedding per location, so that
            after attention the decoder still knows *where* it looked
            (needed for "left of", "above").
        dropout: dropout rate on the embeddings, in training.

    Example:

    >>> encoder = FeatureEncoder(embedding_dim=16, num_locations=4)
    >>> tuple(encoder(keras.ops.ones((1, 2, 2, 8))).shape)
    (1, 4, 16)
    """

    def __init__(
        self,
        embedding_dim: int,
        num_locations: int | None = None,
        position_embedding: bool = True,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if position_embedding and not num_locations:
            raise ValueError("position_embedding needs num_locations (h*w of the feature map).")
        self.embedding_dim = embedding_dim
        self.num_locations = num_locations
        self.position_embedding = position_embedding
        self.dropout_rate = dropout
        self.projection = keras.layers.Dense(embedding_dim, activation="relu", name="projection")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.projection.build((None, None, channels))
        if self.position_embedding:
            self.positions = self.add_weight(
                shape=(self.num_locations, self.embedding_dim),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="positions",
            )
        self.built = True

    def call(self, features, training=False):
        features = ops.cast(features, self.compute_dtype)
        if len(features.shape) == 4:
            batch = ops.shape(features)[0]
            features = ops.reshape(features, (batch, -1, features.shape[-1]))
        encoded = self.projection(features)
        if self.position_embedding:
            encoded = encoded + ops.cast(self.positions, encoded.dtype)[None]
        return self.dropout(encoded, training=training)

    def compute_output_shape(self, input_shape):
        if len(input_shape) == 4:
            locations = None if None in input_shape[1:3] else input_shape[1] * input_shape[2]
        else:
            locations = input_shape[1]
        return (input_shape[0], locations, self.embedding_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "embedding_dim": self.embedding_dim,
            "num_locations": self.num_locations,
            "position_embedding": self.position_embedding,
            "dropout": self.dropout_rate,
        }
