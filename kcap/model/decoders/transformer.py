"""A Transformer decoder over the encoded image locations: `--decoder transformer`."""

from __future__ import annotations

import keras
from keras import ops

from kcap.model.decoders.base import Decoder
from kcap.model.decoders.registry import register_decoder

_MASKED = -1e9  # a masked attention score: its weight is exactly 0 after the softmax (computed in float32)


@keras.saving.register_keras_serializable(package="kcap")
class HeadAttention(keras.layers.Layer):
    """Multi-head dot-product attention whose keys and values can be computed apart and cached.

    `keys_values(inputs)` projects what is attended to into per-head keys and
    values (batch, positions, heads, head_dim); `call(queries, keys, values,
    allowed)` attends to them. A decoder keeps the keys and values of the image
    (computed once) and of the words so far (a cache), instead of
    re-projecting them at every step as `keras.layers.MultiHeadAttention` does.

    Example:

    >>> attention = HeadAttention(width=16, num_heads=4)
    >>> keys, values = attention.keys_values(keras.random.normal((2, 9, 16)))
    >>> outputs, weights = attention(keras.random.normal((2, 3, 16)), keys, values)
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((2, 3, 16), (2, 4, 3, 9))
    """

    def __init__(self, width: int, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        if width % num_heads:
            raise ValueError(f"The width {width} must be a multiple of num_heads {num_heads}.")
        self.width = width
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.query = keras.layers.Dense(width, name="query")
        self.key = keras.layers.Dense(width, name="key")
        self.value = keras.layers.Dense(width, name="value")
        self.output_projection = keras.layers.Dense(width, name="output")

    def build(self, queries_shape=None):
        # What is attended to has the queries' width unless `build_keys_values` said otherwise.
        self.build_keys_values(queries_shape)
        for layer in (self.query, self.output_projection):
            if not layer.built:
                layer.build((None, None, self.width))
        self.built = True

    def build_keys_values(self, inputs_shape=None):
        """Builds the key and value projections for inputs of `inputs_shape` (batch, positions, channels)."""
        for layer in (self.key, self.value):
            if not layer.built:
                layer.build(inputs_shape or (None, None, self.width))

    def _heads(self, x):
        return ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], self.num_heads, self.head_dim))

    def keys_values(self, inputs):
        """(batch, positions, channels) → keys and values, each (batch, positions, heads, head_dim)."""
        return self._heads(self.key(inputs)), self._heads(self.value(inputs))

    def call(self, queries, keys, values, allowed=None):
        """Queries (batch, q, width) → outputs (batch, q, width) and weights (batch, heads, q, positions).

        `allowed` (broadcast to (batch, heads, q, positions)) is True where a position may be attended to.
        """
        query = self._heads(self.query(queries)) * (1.0 / self.head_dim**0.5)
        scores = ops.cast(ops.einsum("bqhd,bkhd->bhqk", query, keys), "float32")
        if allowed is not None:
            scores = ops.where(allowed, scores, _MASKED)
        weights = ops.softmax(scores, axis=-1)
        attended = ops.einsum("bhqk,bkhd->bqhd", ops.cast(weights, values.dtype), values)
        attended = ops.reshape(attended, (ops.shape(attended)[0], ops.shape(attended)[1], self.width))
        return self.output_projection(attended), weights

    def get_config(self):
        return {**super().get_config(), "width": self.width, "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(package="kcap")
class TransformerDecoderBlock(keras.layers.Layer):
    """One pre-LayerNorm decoder layer: causal self-attention, cross-attention, feed-forward.

    `x = x + dropout(self_attention(norm(x)))`, then the same with
    cross-attention over the encoded locations, then with the feed-forward
    `Dense(units, relu) → Dense(width)`. The keys and values of both
    attentions come in from outside (see `TransformerDecoder`), so that one
    decoding step can reuse those of the image and of the words before it.

    Example:

    >>> block = TransformerDecoderBlock(width=16, num_heads=4, units=32)
    >>> words, image = keras.random.normal((2, 5, 16)), keras.random.normal((2, 9, 16))
    >>> keys, values = block.self_attention.keys_values(block.self_norm(words))
    >>> image_keys, image_values = block.cross_attention.keys_values(image)
    >>> causal = keras.ops.tril(keras.ops.ones((5, 5), "bool"))
    >>> outputs, weights = block(words, (keys, values, causal), (image_keys, image_values))
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((2, 5, 16), (2, 4, 5, 9))
    """

    def __init__(self, width: int, num_heads: int, units: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.num_heads = num_heads
        self.units = units
        self.dropout_rate = dropout
        self.self_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="self_norm")
        self.self_attention = HeadAttention(width, num_heads, name="self_attention")
        self.cross_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="cross_norm")
        self.cross_attention = HeadAttention(width, num_heads, name="cross_attention")
        self.feed_forward_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="feed_forward_norm")
        self.feed_forward = keras.layers.Dense(units, activation="relu", name="feed_forward")
        self.feed_forward_output = keras.layers.Dense(width, name="feed_forward_output")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, inputs_shape=None):
        # The image's channels are the width unless `cross_attention.build_keys_values` said otherwise.
        width = (None, None, self.width)
        for layer, shape in (
            (self.self_norm, width),
            (self.self_attention, width),
            (self.cross_norm, width),
            (self.cross_attention, width),
            (self.feed_forward_norm, width),
            (self.feed_forward, width),
            (self.feed_forward_output, (None, None, self.units)),
        ):
            if not layer.built:
                layer.build(shape)
        self.built = True

    def call(self, inputs, words, image, training=False):
        """`words` = (keys, values, allowed positions) of the self-attention, `image` = (keys, values) of the
        cross-attention. Returns the outputs and the cross-attention weights (batch, heads, q, locations)."""
        keys, values, allowed = words
        attended, _ = self.self_attention(self.self_norm(inputs), keys, values, allowed)
        x = inputs + self.dropout(attended, training=training)
        attended, weights = self.cross_attention(self.cross_norm(x), *image)
        x = x + self.dropout(attended, training=training)
        hidden = self.dropout(self.feed_forward(self.feed_forward_norm(x)), training=training)
        return x + self.dropout(self.feed_forward_output(hidden), training=training), weights

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "num_heads": self.num_heads,
            "units": self.units,
            "dropout": self.dropout_rate,
        }


@register_decoder("transformer")
@keras.saving.register_keras_serializable(package="kcap")
class TransformerDecoder(Decoder):
    """A Transformer decoder: causal self-attention over the words, cross-attention over the image.

    The width is `embedding_dim` (the encoded locations have it too); `units`
    is the feed-forward size. Words get a learned position embedding
    (positions `0 .. max_positions - 1`; later positions reuse the last).
    `num_layers` pre-LayerNorm `TransformerDecoderBlock`s, a final
    LayerNorm, and the output Dense to the vocabulary.

    Decoding caches keys and values, so each word costs one step: the memory
    holds every layer's cross-attention keys and values of the image; the
    state holds every layer's self-attention keys and values, preallocated
    to `max_length + 1` positions, and each row's position. A step writes its
    position's keys and values and attends to positions up to it. The
    attention weights returned are the last layer's cross-attention,
    averaged over the heads.

    Args:
        vocabulary_size: number of words, special tokens included.
        embedding_dim: word embedding size and the model's width.
        units: the feed-forward size.
        dropout: dropout rate while training.
        num_layers: decoder layers.
        num_heads: attention heads; `embedding_dim` must be a multiple of it.
        max_positions: word positions with a learned embedding.

    Example:

    >>> decoder = TransformerDecoder(vocabulary_size=50, embedding_dim=16, units=32)
    >>> features = keras.random.normal((2, 9, 16))
    >>> logits, attention = decoder(keras.ops.ones((2, 5), "int32"), features)
    >>> tuple(logits.shape), tuple(attention.shape)
    ((2, 5, 50), (2, 5, 9))
    """

    # TrainConfig fields that `kcap train` passes to the constructor, by argument.
    TRAIN_OPTIONS = {"num_layers": "decoder_layers", "num_heads": "decoder_heads"}

    def __init__(self, *args, num_layers: int = 2, num_heads: int = 4, max_positions: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        vocabulary_size, embedding_dim, units, dropout = (
            self.vocabulary_size, self.embedding_dim, self.units, self.dropout_rate
        )
        if num_layers < 1 or num_heads < 1 or max_positions < 1:
            raise ValueError("num_layers, num_heads and max_positions must be at least 1.")
        if embedding_dim % num_heads:
            raise ValueError(f"embedding_dim {embedding_dim} must be a multiple of num_heads {num_heads}.")
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.max_positions = int(max_positions)
        self.head_dim = embedding_dim // num_heads
        # The attribute names are the weights' paths in saved .keras files.
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.position_embedding = keras.layers.Embedding(max_positions, embedding_dim, name="position_embedding")
        self.blocks = [
            TransformerDecoderBlock(embedding_dim, num_heads, units, dropout, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.logits = keras.layers.Dense(vocabulary_size, name="logits")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, tokens_shape=None, encoded_shape=None):
        width = (None, None, self.embedding_dim)
        for block in self.blocks:
            block.cross_attention.build_keys_values(encoded_shape or width)
        for layer, shape in (
            (self.embedding, (None, None)),
            (self.position_embedding, (None, None)),
            *((block, width) for block in self.blocks),
            (self.final_norm, width),
            (self.logits, width),
        ):
            if not layer.built:
                layer.build(shape)
        self.built = True

    def _embed(self, tokens, positions):
        positions = ops.minimum(positions, self.max_positions - 1)
        return self.embedding(tokens) + self.position_embedding(positions)

    def prepare(self, encoded):
        keys, values = zip(*(block.cross_attention.keys_values(encoded) for block in self.blocks))
        return {"keys": list(keys), "values": list(values)}

    def start(self, memory, max_length):
        keys = memory["keys"][0]
        batch = ops.shape(keys)[0]
        cache = ops.zeros((batch, max_length + 1, self.num_heads, self.head_dim), keys.dtype)
        return {
            "position": ops.zeros((batch,), "int32"),
            "keys": [cache] * self.num_layers,
            "values": [cache] * self.num_layers,
        }

    def step(self, tokens, state, memory):
        position = state["position"]
        x = self._embed(tokens, position)[:, None, :]  # (batch, 1, width)
        slots = ops.arange(ops.shape(state["keys"][0])[1], dtype="int32")
        here = ops.equal(slots[None, :], position[:, None])[:, :, None, None]  # (batch, positions, 1, 1)
        allowed = (slots[None, :] <= position[:, None])[:, None, None, :]  # (batch, 1, 1, positions)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            key, value = block.self_attention.keys_values(block.self_norm(x))
            keys.append(ops.where(here, key, state["keys"][i]))
            values.append(ops.where(here, value, state["values"][i]))
            x, weights = block(x, (keys[i], values[i], allowed), (memory["keys"][i], memory["values"][i]))
        logits = self.output_logits(self.final_norm(x))[:, 0]
        state = {"position": position + 1, "keys": keys, "values": values}
        return logits, state, ops.mean(weights[:, :, 0], axis=1)

    def teacher_forced(self, tokens, encoded, training=False):
        memory = self.prepare(encoded)
        time = ops.shape(tokens)[1]
        positions = ops.arange(time, dtype="int32")
        x = self.dropout(self._embed(tokens, positions[None, :]), training=training)
        causal = (positions[None, :] <= positions[:, None])[None, None]  # (1, 1, time, time)
        for i, block in enumerate(self.blocks):
            keys, values = block.self_attention.keys_values(block.self_norm(x))
            x, weights = block(x, (keys, values, causal), (memory["keys"][i], memory["values"][i]), training=training)
        return self.final_norm(x), ops.mean(weights, axis=1)

    def output_logits(self, outputs, training=False):
        return self.logits(self.dropout(outputs, training=training))

    def get_config(self):
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "max_positions": self.max_positions,
        }
