"""The interface of a caption decoder: what training, every sampler and the export call."""

from __future__ import annotations

import keras


class Decoder(keras.layers.Layer):
    """Base class of the decoders: token ids and encoded image locations in, next-word logits out.

    Training (`Captioner`'s loss) runs `teacher_forced` over whole captions,
    then `output_logits` at the positions that have a word to predict only.
    Decoding (every `kcap.model.samplers` sampler) calls `prepare` once per
    batch, `start` once, then `step` once per word.

    `memory` and `state` are nests (a tensor, or tuples, lists and dicts of
    tensors) of batch-major tensors, whatever the decoder keeps in them: a
    recurrent decoder's hidden state, or a key/value cache preallocated to
    `max_length + 1` positions with each row's position. Every tensor's shape
    must stay the same from step to step, so that a `tf.while_loop` (and XLA)
    can carry the state, and beam search reorders it row by row with
    `tf.nest.map_structure(lambda s: tf.gather(s, parent), state)`.

    A subclass implements the five methods below and `build(tokens_shape,
    encoded_shape)`, which builds every weight, so that a sampler can run
    on a decoder that has never been called. Registered with
    `kcap.model.decoders.register_decoder`, it is `Captioner(decoder=NAME)`
    and `kcap train --decoder NAME`.

    Args:
        vocabulary_size: number of words, special tokens included.
        embedding_dim: word embedding size; the encoded locations have this size too.
        units: the decoder's own width.
        dropout: dropout rate while training.

    Example:

    ```python
    decoder = kcap.model.decoders.get_decoder("gru_attention")(vocabulary_size=50)
    logits, attention = decoder(tokens, encoded)  # teacher forcing
    memory = decoder.prepare(encoded)
    state = decoder.start(memory, max_length)
    logits, state, attention = decoder.step(tokens[:, 0], state, memory)
    ```
    """

    # Constructor arguments beyond the four above that `kcap train` sets from
    # `TrainConfig` fields: {argument: field}, passed as `Captioner(decoder_options=...)`.
    TRAIN_OPTIONS: dict[str, str] = {}

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

    def prepare(self, encoded):
        """What depends on the image only, computed once: encoded (batch, locations, embedding_dim) → memory."""
        raise NotImplementedError

    def start(self, memory, max_length):
        """The state before the first word, for at most `max_length` words and `<end>`."""
        raise NotImplementedError

    def step(self, tokens, state, memory):
        """One word per caption: (batch,) tokens → logits (batch, vocabulary), new state,
        attention weights (batch, locations)."""
        raise NotImplementedError

    def teacher_forced(self, tokens, encoded, training=False):
        """Whole captions at once: (batch, time) tokens → outputs (batch, time, d) for
        `output_logits`, and attention weights (batch, time, locations)."""
        raise NotImplementedError

    def output_logits(self, outputs, training=False):
        """Logits (..., vocabulary) from `teacher_forced` outputs (any leading shape)."""
        raise NotImplementedError

    def call(self, tokens, encoded, training=False):
        """Teacher forcing: (batch, time) tokens → logits (batch, time, vocabulary) and attention."""
        outputs, attention = self.teacher_forced(tokens, encoded, training)
        return self.output_logits(outputs, training), attention

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "dropout": self.dropout_rate,
        }
