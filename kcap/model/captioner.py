"""The captioner: one `keras.Model` from pixels (or cached features) to words."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from kcap.model.augmentation import ImageAugmentation
from kcap.model.decoding import greedy_decode
from kcap.model.decoder import AttentionDecoder
from kcap.model.encoder import FeatureEncoder
from kcap.model.preprocessing import ImagePreprocessing
from kcap.text.vocabulary import PAD_ID


@keras.saving.register_keras_serializable(package="kcap")
class Captioner(keras.Model):
    """Backbone → Dense encoder → GRU decoder with Bahdanau attention.

    Augmentation, preprocessing and the backbone live inside the model, so
    they run on the accelerator and travel with a saved `.keras` file.
    Training uses teacher forcing with a cross-entropy masked on padding.

    Inputs are dicts: `{"images": uint8/float (batch, h, w, 3) in [0, 255]}`
    or, with a feature cache, `{"features": (batch, h', w', c)}`; training
    batches are `(inputs, captions)` with `captions` int32 (batch, time)
    starting with `<start>` and padded with 0.

    Args:
        backbone: a Keras model from pixels to a 4-D feature map.
        vocabulary_size: number of words, special tokens included.
        max_length: most words in a generated caption.
        image_size: (height, width) the backbone is fed.
        embedding_dim: word and location embedding size.
        units: GRU and attention size.
        dropout: dropout on embeddings and the output layer.
        preprocessing: an `ImagePreprocessing` layer or its mode name.
        augmentation: an `ImageAugmentation` layer, or `None`.
        train_backbone: whether the backbone's weights are trained (and its
            batch norm runs in training mode).
        position_embedding: learned embedding per feature-map location.

    Example:

    ```python
    backbone = kcap.model.backbones.build_backbone("small_cnn", weights=None)
    model = Captioner(backbone, vocabulary_size=len(vocab), max_length=vocab.max_length,
                      image_size=(96, 96), preprocessing="scale", train_backbone=True)
    model.compile(optimizer="adam")
    model.fit(train_ds, validation_data=val_ds, epochs=10)
    token_ids, attention, scores = model.generate({"images": images})
    ```
    """

    def __init__(
        self,
        backbone: keras.Model,
        vocabulary_size: int,
        max_length: int,
        image_size: Sequence[int],
        embedding_dim: int = 256,
        units: int = 512,
        dropout: float = 0.0,
        preprocessing: ImagePreprocessing | str = "tf",
        augmentation: ImageAugmentation | None = None,
        train_backbone: bool = False,
        position_embedding: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.vocabulary_size = int(vocabulary_size)
        self.max_length = int(max_length)
        self.image_size = tuple(int(s) for s in image_size)
        self.embedding_dim = int(embedding_dim)
        self.units = int(units)
        self.dropout_rate = float(dropout)
        self.preprocessing = (
            preprocessing if isinstance(preprocessing, ImagePreprocessing) else ImagePreprocessing(preprocessing)
        )
        self.augmentation = augmentation or ImageAugmentation()
        self.train_backbone = bool(train_backbone)
        self.backbone.trainable = self.train_backbone
        self.position_embedding = bool(position_embedding)

        self.feature_shape = tuple(
            int(d) for d in backbone.compute_output_shape((None, *self.image_size, 3))[1:]
        )
        self.encoder = FeatureEncoder(
            self.embedding_dim,
            num_locations=self.feature_shape[0] * self.feature_shape[1],
            position_embedding=self.position_embedding,
            dropout=self.dropout_rate,
            name="encoder",
        )
        self.decoder = AttentionDecoder(
            self.vocabulary_size, self.embedding_dim, self.units, self.dropout_rate, name="decoder"
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="masked_accuracy")
        self._generate_fn = None
        self.build()

    # -- building and saving -------------------------------------------------

    def build(self, input_shape=None):
        image_shape = (None, *self.image_size, 3)
        self.augmentation.build(image_shape)
        self.preprocessing.build(image_shape)
        self.encoder.build((None, *self.feature_shape))
        self.decoder.build((None, None), (None, None, self.embedding_dim))
        self.built = True

    def get_build_config(self):
        return {}

    def build_from_config(self, config):
        self.build()

    def get_config(self):
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "vocabulary_size": self.vocabulary_size,
            "max_length": self.max_length,
            "image_size": list(self.image_size),
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "dropout": self.dropout_rate,
            "preprocessing": keras.saving.serialize_keras_object(self.preprocessing),
            "augmentation": keras.saving.serialize_keras_object(self.augmentation),
            "train_backbone": self.train_backbone,
            "position_embedding": self.position_embedding,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "preprocessing", "augmentation"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    # -- the forward pass ----------------------------------------------------

    def extract_features(self, images, training=False):
        """Pixels in [0, 255] → backbone feature map (batch, h', w', c)."""
        images = ops.cast(images, self.compute_dtype)
        images = self.augmentation(images, training=training)
        images = self.preprocessing(images)
        return self.backbone(images, training=training and self.train_backbone)

    def encode(self, inputs, training=False):
        """`{"images"}` or `{"features"}` → encoded locations (batch, h'*w', embedding_dim)."""
        if "features" in inputs:
            features = inputs["features"]
        elif "images" in inputs:
            features = self.extract_features(inputs["images"], training=training)
        else:
            raise ValueError(f"Captioner inputs need 'images' or 'features'; got keys {sorted(inputs)}.")
        return self.encoder(features, training=training)

    def call(self, inputs, training=False):
        """Teacher forcing: logits (batch, time, vocab) for `inputs["tokens"]`."""
        encoded = self.encode(inputs, training=training)
        logits, _ = self.decoder(inputs["tokens"], encoded, training=training)
        return logits

    # -- training ------------------------------------------------------------

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def _loss_and_accuracy(self, inputs, captions, training):
        tokens, targets = captions[:, :-1], captions[:, 1:]
        logits = self({**inputs, "tokens": tokens}, training=training)
        mask = ops.cast(ops.not_equal(targets, PAD_ID), "float32")
        logits = ops.cast(logits, "float32")
        per_token = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        count = ops.maximum(ops.sum(mask), 1.0)
        loss = ops.sum(per_token * mask) / count
        correct = ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(targets, "int64")), "float32")
        return loss, correct, mask

    def train_step(self, data):
        inputs, captions = data
        with tf.GradientTape() as tape:
            loss, correct, mask = self._loss_and_accuracy(inputs, captions, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._update_metrics(loss, correct, mask)

    def test_step(self, data):
        inputs, captions = data
        loss, correct, mask = self._loss_and_accuracy(inputs, captions, training=False)
        return self._update_metrics(loss, correct, mask)

    def _update_metrics(self, loss, correct, mask):
        # Token-weighted, so an epoch's loss is the mean over all its words.
        self.loss_tracker.update_state(loss, sample_weight=ops.sum(mask))
        self.accuracy_tracker.update_state(correct, sample_weight=mask)
        return {m.name: m.result() for m in self.metrics}

    # -- captioning ----------------------------------------------------------

    def generate(self, inputs, max_length: int | None = None):
        """Greedy captions for a batch, compiled (see `kcap.model.decoding.greedy_decode`).

        Returns `(token_ids, attention, scores)`: int32 (batch, max_length + 1)
        padded with 0 after `<end>`; attention (batch, max_length + 1,
        locations); the log-probability of each caption (float32, (batch,)).
        """
        if self._generate_fn is None:
            self._generate_fn = tf.function(self._greedy, reduce_retracing=True)
        length = tf.constant(max_length or self.max_length, tf.int32)
        return self._generate_fn(inputs, length)

    def _greedy(self, inputs, max_length):
        return greedy_decode(self.decoder, self.encode(inputs, training=False), max_length)
