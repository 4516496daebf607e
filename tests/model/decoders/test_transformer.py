"""`TransformerDecoder` (`--decoder transformer`): cached decoding, samplers, training, saving, export."""

import argparse

import keras
import numpy as np
import pytest
import tensorflow as tf
from decoding_helpers import (
    check_convention,
    check_export_serves_caption_files,
    random_captions,
    random_images,
    teacher_forced,
    tiny_captioner,
)

from kcap.export.savedmodel import build_export_archive, captions_from_ids
from kcap.inference import load_run
from kcap.model.captioner import Captioner
from kcap.model.decoders import TransformerDecoder, decoder_names, get_decoder
from kcap.model.samplers import BeamSampler, GreedySampler
from kcap.model.samplers.base import masked_log_probs
from kcap.text.vocabulary import END_ID, PAD_ID, START_ID
from kcap.training.config import TrainConfig
from kcap.training.flags import add_train_arguments, train_config
from kcap.training.trainer import decoder_options, train


def tiny_decoder(seed=0, vocabulary_size=13, **kwargs):
    keras.utils.set_random_seed(seed)
    decoder = TransformerDecoder(vocabulary_size, embedding_dim=16, units=24, num_layers=2, num_heads=4, **kwargs)
    decoder.build((None, None), (None, None, 16))
    # Sharper word distributions than at initialisation, so greedy choices are not near-ties.
    decoder.logits.kernel.assign(decoder.logits.kernel * 6.0)
    return decoder


def reference_greedy(decoder, encoded, max_length):
    """Greedy decoding that re-runs teacher forcing over the whole prefix at every step: no cache."""
    batch = encoded.shape[0]
    tokens = np.full((batch, 1), START_ID, "int32")
    ids = np.zeros((batch, max_length + 1), "int32")
    scores = np.zeros(batch, "float32")
    finished = np.zeros(batch, bool)
    for t in range(max_length + 1):
        outputs, _ = decoder.teacher_forced(tokens, encoded)
        logits = decoder.output_logits(outputs[:, -1])
        log_probs = masked_log_probs(logits, tf.constant(t == max_length)).numpy()
        word = log_probs.argmax(-1).astype("int32")
        scores += np.where(finished, 0.0, log_probs[np.arange(batch), word])
        word = np.where(finished, PAD_ID, word)
        ids[:, t] = word
        finished |= word == END_ID
        tokens = np.concatenate([tokens, word[:, None]], axis=1)
        if finished.all():
            break
    return ids, scores


def test_each_cached_step_gives_the_logits_of_teacher_forcing_the_whole_prefix():
    decoder = tiny_decoder()
    encoded = keras.random.normal((3, 7, 16), seed=1)
    tokens = np.array([[1, 4, 5, 6, 7, 8], [1, 7, 2, 0, 0, 0], [1, 9, 9, 9, 12, 4]], "int32")
    logits, attention = decoder(tokens, encoded)
    memory = decoder.prepare(encoded)
    state = decoder.start(memory, tokens.shape[1])
    shapes = [s.shape for s in tf.nest.flatten(state)]
    for t in range(tokens.shape[1]):
        step_logits, state, weights = decoder.step(tokens[:, t], state, memory)
        np.testing.assert_allclose(step_logits.numpy(), logits.numpy()[:, t], rtol=0, atol=1e-5)
        np.testing.assert_allclose(weights.numpy(), attention.numpy()[:, t], rtol=0, atol=1e-6)
        np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)
        assert [s.shape for s in tf.nest.flatten(state)] == shapes  # fixed shapes: a while_loop carries them
    np.testing.assert_array_equal(state["position"].numpy(), [tokens.shape[1]] * 3)


def test_greedy_decoding_with_the_cache_equals_re_running_the_prefix():
    decoder = tiny_decoder(seed=2)
    encoded = keras.random.normal((4, 7, 16), seed=3)
    max_length = 8
    expected_ids, expected_scores = reference_greedy(decoder, encoded, max_length)
    for compiled in (False, True):
        function = tf.function(GreedySampler().__call__, jit_compile=True) if compiled else GreedySampler()
        ids, attention, scores = function(decoder, encoded, max_length)
        np.testing.assert_array_equal(ids.numpy(), expected_ids)
        np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-5, atol=1e-5)
        check_convention(ids, attention, max_length)


def test_beam_search_of_one_beam_is_greedy():
    decoder = tiny_decoder(seed=4)
    encoded = keras.random.normal((5, 7, 16), seed=5)
    greedy = GreedySampler()(decoder, encoded, 6)
    beam = BeamSampler(beam_size=1)(decoder, encoded, 6)
    np.testing.assert_array_equal(beam[0].numpy(), greedy[0].numpy())
    np.testing.assert_allclose(beam[2].numpy(), greedy[2].numpy(), rtol=1e-6)
    # Beam search of 3 reorders every layer's cache with its beams: its scores are teacher forcing's.
    ids, attention, scores = BeamSampler(beam_size=3)(decoder, encoded, 6)
    check_convention(ids, attention, 6)
    tokens = np.concatenate([np.full((5, 1), START_ID, "int32"), ids.numpy()[:, :-1]], axis=1)
    log_probs = tf.nn.log_softmax(decoder(tokens, encoded)[0]).numpy()
    ids = ids.numpy()
    lengths = (ids == END_ID).argmax(-1) + 1
    forced = [log_probs[i, np.arange(n), ids[i, :n]].sum() for i, n in enumerate(lengths)]
    np.testing.assert_allclose(scores.numpy(), forced, rtol=1e-4, atol=1e-4)


def test_the_config_round_trips_and_the_registry_lists_it():
    assert "transformer" in decoder_names() and get_decoder("transformer") is TransformerDecoder
    decoder = TransformerDecoder(20, embedding_dim=12, units=8, dropout=0.2, num_layers=3, num_heads=3,
                                 max_positions=10, name="decoder")
    config = decoder.get_config()
    assert {k: config[k] for k in ("vocabulary_size", "embedding_dim", "units", "dropout", "num_layers",
                                   "num_heads", "max_positions")} == {
        "vocabulary_size": 20, "embedding_dim": 12, "units": 8, "dropout": 0.2, "num_layers": 3,
        "num_heads": 3, "max_positions": 10,
    }
    copy = TransformerDecoder.from_config(config)
    assert copy.get_config() == config and len(copy.blocks) == 3
    with pytest.raises(ValueError, match="multiple of num_heads"):
        TransformerDecoder(20, embedding_dim=10, num_heads=4)


def test_flags_reach_the_config_and_the_decoder_options():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--data", "synthetic", "--decoder", "transformer",
                              "--decoder-layers", "3", "--decoder-heads", "2"])
    assert (train_config(args).decoder_layers, train_config(args).decoder_heads) == (3, 2)
    config = TrainConfig(data="synthetic", decoder="transformer", decoder_layers=3, decoder_heads=2)
    assert decoder_options(config) == {"num_layers": 3, "num_heads": 2}
    assert decoder_options(TrainConfig(data="synthetic")) is None  # the GRU's config is as before
    with pytest.raises(ValueError, match="multiple of decoder_heads"):
        TrainConfig(data="synthetic", decoder="transformer", embedding_dim=10, decoder_heads=4).validate()
    from tuning.hypermodel import validate_search_space

    space = {"decoder_layers": {"type": "int", "min": 1, "max": 3}, "decoder_heads": {"type": "choice", "values": [2, 4]}}
    assert validate_search_space(space) == space  # tuner hyperparameters


def test_a_transformer_captioner_trains_saves_reloads_and_exports(tmp_path):
    vocabulary_size, max_length = 12, 6
    model = tiny_captioner(vocabulary_size, max_length, decoder="transformer",
                           decoder_options={"num_layers": 1, "num_heads": 2})
    assert isinstance(model.decoder, TransformerDecoder) and len(model.decoder.blocks) == 1
    assert model.get_config()["decoder_options"] == {"num_layers": 1, "num_heads": 2}
    images = random_images(8)
    captions = random_captions(8, vocabulary_size, max_length)
    # With the attention regulariser, over the cross-attention that teacher forcing returns.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False, attention_regularizer=1.0)
    history = model.fit(images, captions, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    ids, attention, scores = model.generate(images)
    check_convention(ids, attention, max_length)
    forced, _, _ = teacher_forced(model, images, ids.numpy())
    np.testing.assert_allclose(scores.numpy(), forced, rtol=1e-4, atol=1e-4)

    model.save(tmp_path / "transformer.keras")
    reloaded = keras.saving.load_model(tmp_path / "transformer.keras")
    assert isinstance(reloaded.decoder, TransformerDecoder) and len(reloaded.decoder.blocks) == 1
    reloaded_ids, _, reloaded_scores = reloaded.generate(images)
    np.testing.assert_array_equal(reloaded_ids.numpy(), ids.numpy())
    np.testing.assert_allclose(reloaded_scores.numpy(), scores.numpy(), rtol=1e-6)

    words = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(4, vocabulary_size)]
    archive = build_export_archive(reloaded, words, sampler=BeamSampler(2))
    archive.write_out(str(tmp_path / "export"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_images"](
        images=tf.constant(images["images"], tf.float32)
    )
    beam_ids, _, beam_scores = reloaded.generate(images, BeamSampler(2))
    expected = captions_from_ids(beam_ids, tf.constant(words)).numpy()
    assert list(served["caption"].numpy()) == list(expected)
    np.testing.assert_allclose(served["score"].numpy(), beam_scores.numpy(), rtol=1e-5, atol=1e-5)


def test_an_old_captioner_config_has_no_decoder_options():
    model = tiny_captioner()
    config = model.get_config()
    assert "decoder_options" not in config and config["decoder"] == "gru_attention"
    assert Captioner.from_config(config).decoder_options == {}


def test_kcap_train_with_the_transformer_exports_the_captions_of_kcap_caption(tmp_path):
    config = TrainConfig(
        data="synthetic", synthetic_images=24, synthetic_image_size=64, epochs=1, batch_size=8,
        embedding_dim=8, units=16, decoder="transformer", decoder_layers=1, decoder_heads=2, val_captions=0,
    )
    history = train(config, tmp_path / "run", verbose=0)
    assert np.isfinite(history["epochs"][0]["loss"])
    trained = load_run(tmp_path / "run")
    assert trained.config.decoder == "transformer" and trained.model.decoder.num_heads == 2
    check_export_serves_caption_files(tmp_path / "run", tmp_path / "export", "transformer")
