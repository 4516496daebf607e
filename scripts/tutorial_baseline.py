#!/usr/bin/env python3
"""The legacy TensorFlow tutorial "Image captioning with visual attention" (2022), as a baseline.

kcap's speed is measured against this code (`scripts/bench.py`). It re-implements
the tutorial's model and loops faithfully, on Keras 3, so that the comparison is
honest. It does not reuse or improve on anything from kcap:

- cached InceptionV3 features, (64 locations, 2048 channels) per image, float32;
- `CNN_Encoder`: Dense(embedding_dim) + ReLU;
- `RNN_Decoder`: Bahdanau attention (`W1`, `W2` Dense(units), `V` Dense(1)), then
  `GRU(units, return_sequences, return_state, recurrent_initializer="glorot_uniform")`,
  `fc1` Dense(units), `fc2` Dense(vocab). The tutorial applies `W1` to the
  features inside the attention call, so once per token, not once per image;
- `train_step`: one `tf.function` whose Python `for i in range(1, target.shape[1])`
  loop calls the decoder once per token position (teacher forcing, hidden state
  reset to zeros per batch), captions padded to 50 tokens, `Adam()`,
  `SparseCategoricalCrossentropy(from_logits=True, reduction="none")` with a
  padding mask;
- `evaluate`: captions ONE image at a time in an eager Python loop, copying the
  attention weights to the host and looking the word up at every step.

Two things differ from the tutorial, both on purpose:

- `evaluate` picks `argmax` where the tutorial drew from `tf.random.categorical`,
  so that its cost compares with kcap's greedy decoding (the draw is not cheaper);
- `evaluate` starts from the image's cached features. The tutorial ran
  InceptionV3 on the image file first; the benchmark times the backbone separately.

The tutorial's decoder also passes `hidden` to the attention but not to the GRU
(`output, state = self.gru(x)` starts from zeros at every step). That is kept:
it changes what the model learns, not what a step costs.

Example:

```python
baseline = TutorialBaseline(vocabulary_size=5000)
loss, total_loss = baseline.train_step(features, target)   # (64, 64, 2048), (64, 50)
words, attention = baseline.evaluate(features[:1], max_length=16)
```
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# The tutorial's settings.
EMBEDDING_DIM = 256
UNITS = 512
VOCABULARY_SIZE = 5000
MAX_LENGTH = 50  # captions are padded (and cut) to 50 tokens, <start> and <end> included
BATCH_SIZE = 64
ATTENTION_FEATURES_SHAPE = 64  # InceptionV3's 8x8 feature map
FEATURES_SHAPE = 2048

# Token ids shared with kcap's vocabulary, so that both see the same captions.
PAD_ID, START_ID, END_ID = 0, 1, 2


class BahdanauAttention(keras.Model):
    """`score = V tanh(W1 features + W2 hidden)`; W1 runs on every call."""

    def __init__(self, units: int):
        super().__init__()
        self.W1 = keras.layers.Dense(units)
        self.W2 = keras.layers.Dense(units)
        self.V = keras.layers.Dense(1)

    def call(self, features, hidden):
        # features (batch, 64, embedding_dim); hidden (batch, units)
        hidden_with_time_axis = tf.expand_dims(hidden, 1)
        attention_hidden_layer = tf.nn.tanh(self.W1(features) + self.W2(hidden_with_time_axis))
        score = self.V(attention_hidden_layer)  # (batch, 64, 1)
        attention_weights = tf.nn.softmax(score, axis=1)
        context_vector = attention_weights * features
        context_vector = tf.reduce_sum(context_vector, axis=1)
        return context_vector, attention_weights


class CNN_Encoder(keras.Model):  # noqa: N801 - the tutorial's name
    """The cached features are already extracted: one Dense layer and a ReLU."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.fc = keras.layers.Dense(embedding_dim)

    def call(self, x):
        return tf.nn.relu(self.fc(x))


class RNN_Decoder(keras.Model):  # noqa: N801 - the tutorial's name
    """One token per call: attend, embed, GRU, fc1, fc2."""

    def __init__(self, embedding_dim: int, units: int, vocab_size: int):
        super().__init__()
        self.units = units
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
        self.gru = keras.layers.GRU(
            self.units, return_sequences=True, return_state=True, recurrent_initializer="glorot_uniform"
        )
        self.fc1 = keras.layers.Dense(self.units)
        self.fc2 = keras.layers.Dense(vocab_size)
        self.attention = BahdanauAttention(self.units)

    def call(self, x, features, hidden):
        context_vector, attention_weights = self.attention(features, hidden)
        x = self.embedding(x)  # (batch, 1, embedding_dim)
        x = tf.concat([tf.expand_dims(context_vector, 1), x], axis=-1)
        # As in the tutorial: the GRU is not given `hidden` (see the module docstring).
        output, state = self.gru(x)
        x = self.fc1(output)
        x = tf.reshape(x, (-1, x.shape[2]))
        x = self.fc2(x)
        return x, state, attention_weights

    def reset_state(self, batch_size):
        return tf.zeros((batch_size, self.units))


class TutorialBaseline:
    """The tutorial's encoder, decoder, optimizer, `train_step` and `evaluate`.

    Args:
        vocabulary_size: output words (the tutorial: 5000).
        embedding_dim, units: the tutorial's 256 and 512.
        words: id → word, for `evaluate`'s per-step lookup; default `"w<id>"`.
        attention_features_shape: locations per image, for the attention plot.
    """

    def __init__(
        self,
        vocabulary_size: int = VOCABULARY_SIZE,
        embedding_dim: int = EMBEDDING_DIM,
        units: int = UNITS,
        words: list[str] | None = None,
        attention_features_shape: int = ATTENTION_FEATURES_SHAPE,
    ):
        self.encoder = CNN_Encoder(embedding_dim)
        self.decoder = RNN_Decoder(embedding_dim, units, vocabulary_size)
        optimizer = keras.optimizers.Adam()
        if keras.config.dtype_policy().name == "mixed_float16":
            # What the TensorFlow mixed-precision guide prescribes; fit would do it itself.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        self.optimizer = optimizer
        self.loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
        self.attention_features_shape = attention_features_shape
        words = words or [f"w{i}" for i in range(vocabulary_size)]
        # The tutorial's index_to_word was a StringLookup(invert=True): one op per step.
        self.index_to_word = keras.layers.StringLookup(
            vocabulary=list(words), invert=True, num_oov_indices=0, mask_token=None, oov_token="[UNK]"
        )
        # Traced once per input shape, like the tutorial's @tf.function.
        self.train_step = tf.function(self._train_step)

    def build(self, features_shape) -> None:
        """Creates every variable eagerly (the tutorial's first batch did it in the trace)."""
        features = tf.zeros((1, *features_shape))
        encoded = self.encoder(features)
        self.decoder(tf.fill((1, 1), START_ID), encoded, self.decoder.reset_state(1))
        self.optimizer.build(self.encoder.trainable_variables + self.decoder.trainable_variables)

    def loss_function(self, real, pred):
        mask = tf.math.logical_not(tf.math.equal(real, PAD_ID))
        loss_ = self.loss_object(real, pred)
        mask = tf.cast(mask, dtype=loss_.dtype)
        loss_ *= mask
        return tf.reduce_mean(loss_)

    def _train_step(self, img_tensor, target):
        loss = 0
        # Hidden state reset per batch, as in the tutorial.
        hidden = self.decoder.reset_state(batch_size=target.shape[0])
        dec_input = tf.expand_dims([START_ID] * target.shape[0], 1)
        with tf.GradientTape() as tape:
            features = self.encoder(img_tensor)
            # A Python loop: the graph holds one decoder call per token position.
            for i in range(1, target.shape[1]):
                predictions, hidden, _ = self.decoder(dec_input, features, hidden)
                loss += self.loss_function(target[:, i], predictions)
                dec_input = tf.expand_dims(target[:, i], 1)  # teacher forcing
            # The loss itself, unless mixed_float16 wrapped the optimizer in a LossScaleOptimizer.
            scaled = self.optimizer.scale_loss(loss)
        total_loss = loss / int(target.shape[1])
        trainable_variables = self.encoder.trainable_variables + self.decoder.trainable_variables
        gradients = tape.gradient(scaled, trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, trainable_variables))
        return loss, total_loss

    def evaluate(self, img_tensor_val, max_length: int = MAX_LENGTH, stop_at_end: bool = True):
        """Captions ONE image from its features (1, locations, channels), eagerly.

        Returns the words (`<end>` included when reached) and the attention plot.
        `stop_at_end=False` always runs `max_length` steps (for timing).
        """
        attention_plot = np.zeros((max_length, self.attention_features_shape))
        hidden = self.decoder.reset_state(batch_size=1)
        features = self.encoder(img_tensor_val)
        dec_input = tf.expand_dims([START_ID], 0)
        result = []
        for i in range(max_length):
            predictions, hidden, attention_weights = self.decoder(dec_input, features, hidden)
            attention_plot[i] = tf.reshape(attention_weights, (-1,)).numpy()
            # The tutorial: tf.random.categorical(predictions, 1)[0][0]; argmax costs the same.
            predicted_id = int(tf.argmax(predictions[0]).numpy())
            predicted_word = tf.compat.as_text(self.index_to_word(predicted_id).numpy())
            result.append(predicted_word)
            if stop_at_end and predicted_id == END_ID:
                return result, attention_plot[: len(result)]
            dec_input = tf.expand_dims([predicted_id], 0)
        return result, attention_plot[: len(result)]
