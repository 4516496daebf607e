"""The captioner: one `keras.Model` from pixels (or cached features) to words."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kcap import compat
from kcap.model.attention import doubly_stochastic_penalty
from kcap.model.augmentation import ImageAugmentation
from kcap.model.decoders import DEFAULT_DECODER, get_decoder
from kcap.model.encoder import FeatureEncoder
from kcap.model.preprocessing import ImagePreprocessing
from kcap.model.samplers import (
    DEFAULT_LENGTH_PENALTY, BeamSampler, Decoded, GreedySampler, RandomSampler, Sampler, get_sampler, sampler_for,
)
from kcap.text.vocabulary import PAD_ID, START_ID

# What `Captioner.compile(objective=...)` trains for: the words of the training captions
# (teacher forcing), or the CIDEr-D of sampled captions (self-critical sequence training).
OBJECTIVES = ("cross_entropy", "cider")
# The self-critical baseline: the mean reward of the image's other samples, or its greedy caption's.
BASELINES = ("mean", "greedy")
# How the self-critical samples are drawn: from the model's distribution, or as the
# K best captions of a beam search of width K (as the Meshed-Memory Transformer trains).
SCST_SAMPLERS = ("random", "beam")


@keras.saving.register_keras_serializable(package="kcap")
class Captioner(keras.Model):
    """Backbone → Dense encoder → decoder (by default a GRU with Bahdanau attention).

    Augmentation, preprocessing and the backbone live inside the model, so
    they run on the accelerator and travel with a saved `.keras` file.
    Training uses teacher forcing with a cross-entropy masked on padding;
    `compile` adds label smoothing and the attention regulariser to it, or
    makes it self-critical (`objective="cider"`: sampled captions rewarded
    by their CIDEr-D).

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
        units: the decoder's width (GRU and attention size for `gru_attention`).
        dropout: dropout on embeddings and the output layer.
        preprocessing: an `ImagePreprocessing` layer or its mode name.
        augmentation: an `ImageAugmentation` layer, or `None`.
        train_backbone: whether the whole backbone is trained (and its
            batch norm runs in training mode): for a backbone learning from scratch.
        fine_tune_layers: unfreeze only the last N layers of a pretrained
            backbone; its batch-norm layers stay frozen, in inference mode.
        position_embedding: learned embedding per feature-map location.
        decoder: the name of a registered decoder (`kcap.model.decoders`);
            a saved model without one has `gru_attention`, the default.
        decoder_options: more keyword arguments of the decoder's constructor
            (`TransformerDecoder`'s `num_layers`, `num_heads`; `AttentionDecoder`'s
            `context_gate`, `deep_output`), or `None`.

    Example:

    ```python
    backbone = kcap.model.backbones.build_backbone("small_cnn", weights=None)
    model = Captioner(backbone, vocabulary_size=len(vocab), max_length=vocab.max_length,
                      image_size=(96, 96), preprocessing="scale", train_backbone=True)
    model.compile(optimizer="adam", label_smoothing=0.1, attention_regularizer=1.0)
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
        fine_tune_layers: int = 0,
        decoder: str = DEFAULT_DECODER,
        decoder_options: Mapping[str, object] | None = None,
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
        self.fine_tune_layers = int(fine_tune_layers)
        self._set_backbone_trainable()
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
        self.decoder_name = str(decoder)
        self.decoder_options = dict(decoder_options or {})
        self.decoder = get_decoder(self.decoder_name)(
            self.vocabulary_size, self.embedding_dim, self.units, self.dropout_rate, name="decoder",
            **self.decoder_options,
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="masked_accuracy")
        self.label_smoothing = 0.0  # training settings: see `compile`
        self.attention_regularizer = 0.0
        self.objective = "cross_entropy"
        self.__dict__["reward"] = None
        self.samples_per_image = 5
        self.baseline = "mean"
        self.sample_max_length = self.max_length
        self.sampler = "random"
        self.cross_entropy_weight = 0.0
        self.build()

    def _set_backbone_trainable(self):
        self.backbone.trainable = self.train_backbone
        if self.fine_tune_layers and not self.train_backbone:
            self.backbone.trainable = True
            layers = [layer for layer in self.backbone.layers if layer.weights]
            tuned = layers[-self.fine_tune_layers:]
            for layer in self.backbone.layers:
                frozen = layer not in tuned or isinstance(layer, keras.layers.BatchNormalization)
                layer.trainable = not frozen

    # -- building and saving -------------------------------------------------

    def build(self, input_shape=None):
        image_shape = (None, *self.image_size, 3)
        self.augmentation.build(image_shape)
        self.preprocessing.build(image_shape)
        self.encoder.build((None, *self.feature_shape))
        self.decoder.build((None, None), (None, None, self.embedding_dim))
        self.built = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        compat.build_optimizer_only(self)  # every layer is built in __init__; see kcap.compat

    def get_build_config(self):
        return {}

    def build_from_config(self, config):
        if not self.built:  # keras-tuner's Hyperband calls this on a built model
            self.build()

    def get_config(self):
        config = {
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
            "fine_tune_layers": self.fine_tune_layers,
            "decoder": self.decoder_name,
        }
        if self.decoder_options:  # absent, as in models saved before it existed, where there are none
            config["decoder_options"] = dict(self.decoder_options)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "preprocessing", "augmentation"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    # -- the forward pass ----------------------------------------------------

    def extract_features(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Pixels in [0, 255] → backbone feature map (batch, h', w', c)."""
        return self.backbone(self._backbone_inputs(images, training), training=training and self.train_backbone)

    def _backbone_inputs(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        images = ops.cast(images, self.compute_dtype)
        images = self.augmentation(images, training=training)
        return self.preprocessing(images)

    def feature_extractor(self) -> Callable[[tf.Tensor], tf.Tensor]:
        """`extract_features` in inference mode, compiled, float16 out: for the feature cache.

        The backbone's weights enter the compiled graph as constants, a snapshot
        of them as they are now. TensorFlow's graph optimizer can then fold and
        fuse what depends on them (the batch norms, for one), which it cannot
        do with variables: on a 2-core CPU that makes MobileNetV2 1.25-1.6x
        faster than calling the backbone. A later call takes a new snapshot if
        the weights have changed since.
        """
        trainable = [v.numpy() for v in self.backbone.trainable_variables]
        non_trainable = [v.numpy() for v in self.backbone.non_trainable_variables]
        # Kept out of Keras' attribute tracking.
        snapshot, extract = self.__dict__.get("_feature_extractor", (None, None))
        if snapshot is not None and _same_arrays(snapshot, (trainable, non_trainable)):
            return extract

        @tf.function(reduce_retracing=True)
        def extract(images: tf.Tensor) -> tf.Tensor:
            # Made inside the function, the weights are graph constants; captured
            # from outside, they would be inputs the optimizer cannot fold.
            features, _ = self.backbone.stateless_call(
                [tf.constant(w) for w in trainable],
                [tf.constant(w) for w in non_trainable],
                self._backbone_inputs(images, training=False),
                training=False,
            )
            return tf.cast(features, tf.float16)

        self.__dict__["_feature_extractor"] = ((trainable, non_trainable), extract)
        return extract

    def encode(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
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

    def compile(
        self,
        *args,
        label_smoothing: float = 0.0,
        attention_regularizer: float = 0.0,
        objective: str = "cross_entropy",
        reward: Callable[[tf.Tensor, object], tf.Tensor] | None = None,
        samples_per_image: int = 5,
        baseline: str = "mean",
        sample_max_length: int | None = None,
        sampler: str = "random",
        cross_entropy_weight: float = 0.0,
        **kwargs,
    ):
        """Keras' `compile`, and the settings of the training objective beside the optimizer's.

        They belong to training, not to the model: a saved model is the same
        whatever they were, and `kcap train` passes them from its config on
        every start and resume, as it does the optimizer.

        Args:
            label_smoothing: the cross-entropy's target is `1 - label_smoothing`
                on the word and `label_smoothing / vocabulary_size` on every word
                (as `keras.losses.CategoricalCrossentropy(label_smoothing=...)`).
            attention_regularizer: λ of Show, Attend and Tell's doubly
                stochastic attention regulariser, added to the loss as λ times
                its mean over the captions (`doubly_stochastic_penalty`).
            objective: `"cross_entropy"` (teacher forcing on the training
                captions), or `"cider"`: self-critical sequence training
                (Rennie et al., 2017). Each image's `samples_per_image`
                captions, drawn from the model (temperature 1), are rewarded
                by `reward`; the loss is `-(reward - baseline) * log p(word)`
                averaged over the sampled words, `<end>` included where the
                model chose it (not where `sample_max_length` forced it). Training
                batches are then `(inputs, references)`, `references` what
                `reward` takes beside the captions (rows of
                `CiderReward.reference_vectors`, one per image).
                `test_step` (`val_loss`) stays the cross-entropy.
            reward: with `objective="cider"`, a function of sampled token ids
                (captions, time) and the references of each caption → float32
                (captions,): a `kcap.model.cider_reward.CiderReward`.
            samples_per_image: K, the captions sampled per image.
            baseline: `"mean"`: the mean reward of the image's other K - 1
                samples; `"greedy"`: the reward of its greedy caption.
            sample_max_length: the most words a sample (and the greedy
                baseline) may have before `<end>` is forced; at most, and by
                default, the model's `max_length`. Shorter is faster, and keeps
                the long tail of rambling samples out of the gradient.
            sampler: `"random"`: K captions drawn at temperature 1; `"beam"`:
                the K best finished captions of a beam search of width K
                (Cornia et al., 2020), which never draws the unlikely words
                that sampling spends much of its gradient pushing down.
            cross_entropy_weight: w > 0 adds w times the cross-entropy of the
                images' reference captions (teacher forcing) to the
                self-critical loss, the mixed objective of Paulus et al.
                (2017): it anchors the model to human captions while it
                chases the reward. The references then also hold
                `"captions"`: int32 (images, references, time) token ids,
                rows of padding where an image has fewer.
            *args, **kwargs: `keras.Model.compile`'s.

        The reported `loss` and `val_loss` are the whole objective; with
        `objective="cider"`, `reward` is the mean reward of the samples.

        Example:

        ```python
        model.compile(optimizer="adam", label_smoothing=0.1, attention_regularizer=1.0)
        model.compile(optimizer=keras.optimizers.Adam(5e-5), objective="cider", reward=CiderReward(refs, len(vocab)))
        ```
        """
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        if not 0.0 <= attention_regularizer < float("inf"):
            raise ValueError(f"attention_regularizer must be 0 or more, got {attention_regularizer}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        if objective == "cider":
            if reward is None:
                raise ValueError("objective='cider' needs a reward, e.g. kcap.model.cider_reward.CiderReward(...).")
            if baseline not in BASELINES:
                raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}.")
            if not 0.0 <= cross_entropy_weight < float("inf"):
                raise ValueError(f"cross_entropy_weight must be 0 or more, got {cross_entropy_weight}.")
            if sampler not in SCST_SAMPLERS:
                raise ValueError(f"sampler must be one of {SCST_SAMPLERS}, got {sampler!r}.")
            if sample_max_length is not None and sample_max_length < 1:
                raise ValueError(f"sample_max_length must be at least 1, got {sample_max_length}.")
            if samples_per_image < (2 if baseline == "mean" else 1):
                raise ValueError(
                    f"samples_per_image={samples_per_image}: the 'mean' baseline averages the other samples "
                    "of each image, so it needs at least 2; sample more, or use baseline='greedy'."
                )
        super().compile(*args, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.attention_regularizer = float(attention_regularizer)
        self.objective = objective
        # Out of Keras' attribute tracking: training settings, not model state, that no saved file holds.
        self.__dict__["reward"] = reward
        if objective == "cider":
            self.__dict__["reward_tracker"] = keras.metrics.Mean(name="reward")
        self.samples_per_image = int(samples_per_image)
        self.baseline = baseline
        self.sample_max_length = min(self.max_length, int(sample_max_length or self.max_length))
        self.sampler = sampler
        self.cross_entropy_weight = float(cross_entropy_weight)

    def get_compile_config(self):
        config = super().get_compile_config()
        # Only where set, so that the files of models trained without them stay as they were.
        for name in ("label_smoothing", "attention_regularizer"):
            if config and getattr(self, name):
                config[name] = getattr(self, name)
        return config

    def compile_from_config(self, config):
        # Keras' own skips a model whose compile() is overridden; this is its body.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        # The reward only where there is one: a cross-entropy run's logs stay as they were.
        return [self.loss_tracker, self.accuracy_tracker] + ([self.reward_tracker] if self.objective == "cider" else [])

    def _loss_terms(self, inputs, captions, training, encoded=None):
        """The objective as a list of (mean, count) terms, each a mean over `count` items of the batch,
        and whether each word (padding left out) was predicted right.

        The terms: the cross-entropy over the captions' words; with
        `attention_regularizer`, λ times the attention penalty over the captions.
        `encoded` (one row per caption) stands in for `encode(inputs)` where given.
        """
        tokens, targets = captions[:, :-1], captions[:, 1:]
        if encoded is None:
            encoded = self.encode(inputs, training=training)
        outputs, attention = self.decoder.teacher_forced(tokens, encoded, training=training)
        # The output layers only where there is a word to predict: a batch is as
        # long as its longest caption, and about half its positions are padding;
        # at a 5,000-word vocabulary the logits are a step's largest matrix product.
        is_word = ops.not_equal(targets, PAD_ID)
        words = tf.where(is_word)
        logits = self.decoder.output_logits(tf.gather_nd(outputs, words), training=training)
        logits = ops.cast(logits, "float32")
        targets = tf.gather_nd(targets, words)
        if self.label_smoothing:
            per_token = keras.losses.categorical_crossentropy(
                ops.one_hot(targets, self.vocabulary_size), logits, from_logits=True,
                label_smoothing=self.label_smoothing,
            )
        else:
            per_token = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        count = ops.cast(ops.shape(targets)[0], "float32")
        terms = [(ops.sum(per_token) / ops.maximum(count, 1.0), count)]
        if self.attention_regularizer:
            # Captions without a word (padding rows) have no attention to regularise.
            has_words = ops.cast(ops.any(is_word, axis=1), "float32")
            penalty = ops.sum(doubly_stochastic_penalty(attention, is_word) * has_words)
            captions_count = ops.sum(has_words)
            terms.append((self.attention_regularizer * penalty / ops.maximum(captions_count, 1.0), captions_count))
        correct = ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(targets, "int64")), "float32")
        return terms, correct

    def train_step(self, data):
        if self.objective == "cider":
            return self._self_critical_step(data)
        inputs, captions = data
        with tf.GradientTape() as tape:
            terms, correct = self._loss_terms(inputs, captions, training=True)
            # Under tf.distribute each replica sees part of the global batch and
            # the optimizer sums the replicas' gradients: weight this replica's
            # mean of each term by its share of the term's global count (words,
            # captions), so the sum is the gradient of the global means.
            scaled_loss = self.optimizer.scale_loss(sum(_replica_shares(terms)))
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._update_metrics(terms, correct)

    def test_step(self, data):
        inputs, captions = data
        return self._update_metrics(*self._loss_terms(inputs, captions, training=False))

    def _update_metrics(self, terms, correct):
        (loss, tokens), others = terms[0], terms[1:]
        if others:
            # Means over other counts (captions) enter as this replica's share of their
            # global means, per word of this replica: the loss's token-weighted mean over
            # the replicas is then the whole objective, as on one device.
            per_word = ops.maximum(_global_sum(tokens), 1.0) / ops.maximum(tokens, 1.0)
            loss = loss + sum(_replica_shares(others)) * per_word
        # Token-weighted, so an epoch's loss is the mean over all its words.
        self.loss_tracker.update_state(loss, sample_weight=tokens)
        self.accuracy_tracker.update_state(correct)
        return compat.multi_worker_step_outputs({m.name: m.result() for m in (self.loss_tracker, self.accuracy_tracker)})

    # -- self-critical training --------------------------------------------------

    def self_critical_samples(
        self, encoded: tf.Tensor, references, seed: tf.Tensor | int = 0
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The captions a self-critical step trains on, with their rewards and baselines.

        `encoded` (images, locations, embedding_dim) from `encode`;
        `references` the reward's, one row per image. Returns token ids
        int32 (images * K, sample_max_length + 1), image-major (an image's K samples
        together), drawn by `RandomSampler(temperature=1, seed=seed)` (or
        the K best of `BeamSampler(beam_size=K)`, with rows of padding where
        it finished fewer), and float32 (images * K,) rewards and baselines
        (a baseline equals its reward where there is nothing to compare).
        `train_step` draws with the optimizer's iteration count as the seed,
        so a resumed run draws what an uninterrupted one would.

        Example:

        ```python
        ids, rewards, baselines = model.self_critical_samples(model.encode(inputs), references, seed=3)
        ```
        """
        k = self.samples_per_image
        repeated = tf.nest.map_structure(lambda x: tf.repeat(x, k, axis=0), references)
        length = self.sample_max_length
        if self.sampler == "beam":
            ids, _, scores = BeamSampler(beam_size=k).candidates(self.decoder, encoded, length)
            ids = tf.reshape(ids, (-1, length + 1))
            # A search may finish fewer than K captions: the missing ones (all padding) have
            # no words to train and count in no baseline.
            found = tf.math.is_finite(tf.reshape(scores, (-1,)))
        else:
            ids, _, _ = RandomSampler(temperature=1.0, seed=seed)(self.decoder, tf.repeat(encoded, k, axis=0), length)
            found = tf.ones([tf.shape(ids)[0]], tf.bool)
        rewards = self.reward(ids, repeated)
        if self.baseline == "greedy":
            greedy, _, _ = GreedySampler()(self.decoder, encoded, length)
            baselines = tf.repeat(self.reward(greedy, references), k, axis=0)
        else:
            found_k = tf.reshape(tf.cast(found, rewards.dtype), (-1, k))
            per_image = tf.reshape(rewards, (-1, k)) * found_k
            others = tf.reduce_sum(found_k, axis=1, keepdims=True) - found_k
            mean_of_others = (tf.reduce_sum(per_image, axis=1, keepdims=True) - per_image) / tf.maximum(others, 1.0)
            baselines = tf.reshape(mean_of_others, (-1,))
            found = tf.logical_and(found, tf.reshape(others > 0, (-1,)))
        # No sample, or no other sample to compare it with: no advantage.
        baselines = tf.where(found, baselines, rewards)
        return ids, rewards, baselines

    def sample_log_probs(self, encoded: tf.Tensor, ids: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Log-probabilities of the words of decoded captions (`<end>` included), by teacher forcing.

        `encoded` has one row per caption of `ids` (as a sampler returns them).
        Returns float32 log p of each word, flat over the batch, and the
        (caption, position) index of each: the gradient of a policy.
        """
        tokens = tf.concat([tf.fill([tf.shape(ids)[0], 1], START_ID), ids[:, :-1]], axis=1)
        outputs, _ = self.decoder.teacher_forced(tokens, encoded, training=training)
        words = tf.where(tf.not_equal(ids, PAD_ID))
        logits = ops.cast(self.decoder.output_logits(tf.gather_nd(outputs, words), training=training), "float32")
        log_probs = -keras.losses.sparse_categorical_crossentropy(tf.gather_nd(ids, words), logits, from_logits=True)
        return log_probs, words

    def _self_critical_step(self, data):
        inputs, references = data
        references = dict(references)
        captions = references.pop("captions", None)
        if self.cross_entropy_weight and captions is None:
            raise ValueError(
                "cross_entropy_weight > 0 needs the images' reference captions: a 'captions' entry beside the "
                "reward's references (token ids, (images, references, time))."
            )
        seed = tf.cast(self.optimizer.iterations, tf.int64)
        with tf.GradientTape() as tape:
            # Dropout off throughout: the policy gradient needs log p under the very
            # distribution the captions were drawn from, and sampling runs without it.
            encoded = self.encode(inputs, training=False)
            # Sampling is not differentiated: the gradient flows through log p of the samples alone.
            ids, rewards, baselines = self.self_critical_samples(tf.stop_gradient(encoded), references, seed)
            log_probs, words = self.sample_log_probs(tf.repeat(encoded, self.samples_per_image, axis=0), ids, False)
            # An `<end>` after sample_max_length words was forced, not drawn: it is no
            # action of the policy, and pushing its log p down would teach the model never to end.
            drawn = tf.where(words[:, 1] < self.sample_max_length)[:, 0]
            log_probs, words = tf.gather(log_probs, drawn), tf.gather(words, drawn)
            advantages = tf.gather(rewards - baselines, words[:, 0])
            count = ops.cast(ops.shape(log_probs)[0], "float32")
            loss = -ops.sum(advantages * log_probs) / ops.maximum(count, 1.0)
            terms = [(loss, count)]
            if self.cross_entropy_weight:
                per_image = tf.shape(captions)[1]
                captions = tf.reshape(captions, (-1, tf.shape(captions)[2]))
                (cross_entropy, reference_words), *_ = self._loss_terms(
                    None, captions, False, encoded=tf.repeat(encoded, per_image, axis=0)
                )[0]
                terms.append((self.cross_entropy_weight * cross_entropy, reference_words))
                loss = loss + self.cross_entropy_weight * cross_entropy
            scaled_loss = self.optimizer.scale_loss(sum(_replica_shares(terms)))
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        self.loss_tracker.update_state(loss, sample_weight=count)
        # A beam search's missing captions (all padding) are no samples.
        self.reward_tracker.update_state(rewards, sample_weight=tf.not_equal(ids[:, 0], PAD_ID))
        return compat.multi_worker_step_outputs({m.name: m.result() for m in (self.loss_tracker, self.reward_tracker)})

    # -- captioning ----------------------------------------------------------

    def generate(
        self,
        inputs: Mapping[str, tf.Tensor],
        sampler: str | Sampler | None = None,
        max_length: int | None = None,
        beam_size: int = 1,
        temperature: float | None = None,
        length_penalty: float = DEFAULT_LENGTH_PENALTY,
        seed: int = 0,
        jit_compile: bool = True,
        no_repeat_ngram: int = 0,
    ) -> Decoded:
        """Captions a batch, compiled: greedy, beam search or sampling.

        `sampler` is a `kcap.model.samplers` sampler or its name. Without
        one, the keywords choose: `temperature` set → `RandomSampler`
        (seeded, reproducible); `beam_size > 1` → `BeamSampler`, ranked with
        the GNMT `length_penalty`; otherwise → `GreedySampler`. Greedy and beam
        search with `no_repeat_ngram` n > 0 never repeat an n-gram. Each sampler
        kind (and beam size) is one `tf.function`, traced once and cached on
        the model. The numbers are tensors, so a new length, temperature,
        penalty or seed does not retrace. With `jit_compile`, greedy and beam
        search compile their word-by-word loop (not the backbone) with XLA,
        once per batch size and length.

        Returns `(token_ids, attention, scores)`: int32 (batch, max_length + 1)
        with the words, `<end>` (forced after `max_length` words), then 0s;
        attention (batch, max_length + 1, locations); the log-probability of
        each caption, `<end>` included (float32, (batch,)).

        Example:

        ```python
        ids, attention, scores = model.generate({"images": images}, beam_size=5)
        ids, _, _ = model.generate({"images": images}, temperature=0.8, seed=1)
        ids, _, _ = model.generate({"images": images}, RandomSampler(temperature=0.8, top_k=10))
        ```
        """
        max_length = int(self.max_length if max_length is None else max_length)
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}.")
        if sampler is None:
            sampler = sampler_for(beam_size, temperature, length_penalty, seed, no_repeat_ngram)
        else:
            sampler = get_sampler(sampler)
            if (beam_size, temperature, length_penalty, seed, no_repeat_ngram) != (1, None, DEFAULT_LENGTH_PENALTY, 0, 0):
                raise ValueError(
                    f"Give the settings to the sampler ({sampler!r}), not as beam_size, temperature, "
                    "length_penalty, seed or no_repeat_ngram as well."
                )
        length = tf.constant(max_length, tf.int32)
        return self._decode_function(sampler, jit_compile)(inputs, length, sampler.tensors())

    def decode(
        self, encoded: tf.Tensor, sampler: str | Sampler = "greedy", max_length: tf.Tensor | int | None = None
    ) -> Decoded:
        """Encoded images (see `encode`) → `(token_ids, attention, scores)` by `sampler`.

        The word-by-word loop that `generate` compiles and the SavedModel
        export serves; `max_length` defaults to the model's.

        Example:

        ```python
        ids, attention, scores = model.decode(model.encode({"images": images}), BeamSampler(3))
        ```
        """
        max_length = self.max_length if max_length is None else max_length
        return get_sampler(sampler)(self.decoder, encoded, max_length)

    def _decode_function(self, sampler: Sampler, jit_compile: bool):
        # Kept in __dict__, out of Keras/TF attribute tracking: these are
        # caches, not model state, and must not end up in saved files.
        functions = self.__dict__.setdefault("_decode_functions", {})
        # XLA fuses each step's many small ops (on 2 CPU cores: batch-1 greedy
        # latency 13 -> 8 ms), but runs a CNN backbone ~10x slower on a CPU, so
        # only the loop is compiled by it, and only where the sampler's ops have XLA kernels.
        jit = bool(jit_compile) and sampler.jit_compile
        key = (sampler.trace_key(), jit)
        if key not in functions:
            # `sampler` fixes the structural settings; each call's numbers come in as tensors.
            decode_loop = tf.function(
                lambda encoded, max_length, tensors: self.decode(encoded, sampler.with_tensors(tensors), max_length),
                jit_compile=jit,
            )

            def decode(inputs, max_length, tensors):
                return decode_loop(self.encode(inputs, training=False), max_length, tensors)

            functions[key] = tf.function(decode, reduce_retracing=True)
        return functions[key]


def _replica_shares(terms):
    """Each (mean, count) term's mean times this replica's share of the count over all replicas."""
    return [mean * count / ops.maximum(_global_sum(count), 1.0) for mean, count in terms]


def _global_sum(value):
    """Sum of `value` over the replicas of the current tf.distribute strategy."""
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
    return value


def _same_arrays(a: Sequence[Sequence[np.ndarray]], b: Sequence[Sequence[np.ndarray]]) -> bool:
    return all(
        len(x) == len(y) and all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(x, y))
        for x, y in zip(a, b)
    )
