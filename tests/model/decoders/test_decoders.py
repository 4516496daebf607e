"""`kcap.model.decoders`: the registry, and a decoder added in one module trains, captions and exports.

`MeanContextDecoder` below is the recipe: a `Decoder` subclass registered by
name. Nothing in training, the samplers or the export knows of it.
"""


import keras
import numpy as np
import pytest
from decoding_helpers import check_convention, check_export_serves_caption_files, teacher_forced
from keras import ops

from kcap.inference import load_run
from kcap.model.captioner import Captioner
from kcap.model.decoders import AttentionDecoder, Decoder, decoder_names, get_decoder, register_decoder
from kcap.model.samplers import BeamSampler, GreedySampler
from kcap.training.config import TrainConfig
from kcap.training.trainer import train


@register_decoder("test_mean_context")
class MeanContextDecoder(Decoder):
    """No recurrence: the next word from the mean of the caption's word embeddings so far and of the locations.

    Its state is a nest, the running sum of the embeddings and the count of
    words; its attention is spread evenly over the locations.
    """

    def __init__(self, vocabulary_size, embedding_dim=256, units=512, dropout=0.0, **kwargs):
        super().__init__(vocabulary_size, embedding_dim, units, dropout, **kwargs)
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim)
        self.hidden = keras.layers.Dense(units, activation="tanh")
        self.logits = keras.layers.Dense(vocabulary_size)
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, tokens_shape=None, encoded_shape=None):
        self.embedding.build((None,))
        self.hidden.build((None, self.embedding_dim + (encoded_shape or (None, None, self.embedding_dim))[-1]))
        self.logits.build((None, self.units))
        self.built = True

    def prepare(self, encoded):
        uniform = ops.ones(ops.shape(encoded)[:2]) / ops.cast(ops.shape(encoded)[1], "float32")
        return {"context": ops.mean(encoded, axis=1), "attention": uniform}

    def start(self, memory, max_length):
        batch = ops.shape(memory["context"])[0]
        return {"sum": ops.zeros((batch, self.embedding_dim)), "count": ops.zeros((batch, 1))}

    def step(self, tokens, state, memory):
        state = {"sum": state["sum"] + self.embedding(tokens), "count": state["count"] + 1.0}
        outputs = ops.concatenate([state["sum"] / state["count"], memory["context"]], axis=-1)
        return self.output_logits(outputs), state, memory["attention"]

    def teacher_forced(self, tokens, encoded, training=False):
        embedded = self.dropout(self.embedding(tokens), training=training)
        counts = ops.cast(ops.arange(1, ops.shape(tokens)[1] + 1), embedded.dtype)[None, :, None]
        means = ops.cumsum(embedded, axis=1) / counts
        memory = self.prepare(encoded)
        context = ops.broadcast_to(memory["context"][:, None, :], ops.shape(means)[:2] + (encoded.shape[-1],))
        attention = ops.broadcast_to(memory["attention"][:, None, :], ops.shape(means)[:2] + (ops.shape(encoded)[1],))
        return ops.concatenate([means, context], axis=-1), attention

    def output_logits(self, outputs, training=False):
        return self.logits(self.dropout(self.hidden(outputs), training=training))


# -- the registry ----------------------------------------------------------------


def test_the_registry_finds_decoders_by_name_and_says_which_there_are():
    assert get_decoder("gru_attention") is AttentionDecoder and get_decoder("test_mean_context") is MeanContextDecoder
    assert {"gru_attention", "test_mean_context"} <= set(decoder_names())
    with pytest.raises(ValueError, match=r"Unknown decoder 'lstm'; the registered decoders are \[.*'gru_attention'"):
        get_decoder("lstm")
    with pytest.raises(ValueError, match=r"'gru_attention' is taken by kcap.model.decoders.gru_attention"):
        register_decoder("gru_attention")(MeanContextDecoder)
    with pytest.raises(TypeError, match="subclass of kcap.model.decoders.Decoder"):
        register_decoder("dense")(keras.layers.Dense)
    with pytest.raises(ValueError, match=r"decoder must be one of \[.*'gru_attention'"):
        TrainConfig(data="synthetic", decoder="lstm").validate()


def test_a_captioner_records_its_decoder_and_an_old_config_has_the_gru():
    from kcap.model.backbones import build_backbone

    backbone = build_backbone("small_cnn", weights=None, image_size=64)
    model = Captioner(backbone, 12, 4, (64, 64), embedding_dim=8, units=8, decoder="test_mean_context")
    assert isinstance(model.decoder, MeanContextDecoder) and model.get_config()["decoder"] == "test_mean_context"
    config = Captioner(backbone, 12, 4, (64, 64), embedding_dim=8, units=8).get_config()
    assert config.pop("decoder") == "gru_attention"
    # A model saved before decoders had names:
    assert isinstance(Captioner.from_config(config).decoder, AttentionDecoder)


# -- the tiny decoder, end to end ------------------------------------------------


@pytest.fixture(scope="module")
def mean_context_run(tmp_path_factory):
    config = TrainConfig(
        data="synthetic", synthetic_images=24, synthetic_image_size=64, epochs=1, batch_size=8,
        embedding_dim=8, units=16, decoder="test_mean_context", val_captions=4, monitor="val_bleu4",
    )
    run_dir = tmp_path_factory.mktemp("mean-context-run")
    history = train(config, run_dir, verbose=0)
    assert np.isfinite(history["epochs"][0]["loss"]) and "val_bleu4" in history["epochs"][0]
    return run_dir


def test_a_registered_decoder_trains_captions_and_reloads(mean_context_run):
    trained = load_run(mean_context_run)
    model = trained.model
    assert isinstance(model.decoder, MeanContextDecoder) and trained.config.decoder == "test_mean_context"
    test = [item["image"] for item in trained.run.load_splits()["splits"]["test"]]
    inputs = {"images": np.stack([keras.utils.img_to_array(keras.utils.load_img(p)) for p in test]).astype("uint8")}
    greedy = model.generate(inputs)
    beam_one = model.generate(inputs, BeamSampler(beam_size=1))
    np.testing.assert_array_equal(beam_one[0].numpy(), greedy[0].numpy())
    np.testing.assert_allclose(beam_one[2].numpy(), greedy[2].numpy(), rtol=1e-6)
    beam = model.generate(inputs, beam_size=3)
    for ids, attention, scores in (greedy, beam, model.generate(inputs, temperature=2.0)):
        check_convention(ids, attention, model.max_length)
        # Beam search moved both parts of the nested state with their beams: its
        # scores are the teacher-forced ones of the captions it returns.
        forced, _, _ = teacher_forced(model, inputs, ids.numpy())
        np.testing.assert_allclose(scores.numpy(), forced, rtol=1e-4, atol=1e-4)
    captions = trained.caption_files(test, beam_size=3)
    assert [c["caption"] for c in captions] == [trained.vocabulary.decode(r) for r in beam[0].numpy()]


def test_a_registered_decoder_exports_and_serves_the_captions_of_kcap_caption(mean_context_run, tmp_path):
    check_export_serves_caption_files(mean_context_run, tmp_path / "export", "test_mean_context")


@pytest.mark.parametrize("options", [{}, {"context_gate": True, "deep_output": True}])
def test_the_gru_decoder_steps_as_it_teacher_forces(options):
    decoder = AttentionDecoder(vocabulary_size=10, embedding_dim=8, units=12, **options)
    encoded = keras.random.normal((3, 5, 8), seed=1)
    tokens = np.array([[1, 4, 5, 6], [1, 7, 2, 0], [1, 9, 9, 9]], "int32")
    logits, attention = decoder(tokens, encoded)
    memory = decoder.prepare(encoded)
    state = decoder.start(memory, 4)
    for t in range(tokens.shape[1]):
        step_logits, state, weights = decoder.step(tokens[:, t], state, memory)
        np.testing.assert_allclose(step_logits.numpy(), logits.numpy()[:, t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weights.numpy(), attention.numpy()[:, t], rtol=1e-5, atol=1e-6)
    assert GreedySampler()(decoder, encoded, 4)[0].shape == (3, 5)
