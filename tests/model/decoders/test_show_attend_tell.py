"""Show, Attend and Tell's own details: the GRU decoder's `context_gate` and `deep_output`, the attention
regulariser and label smoothing (`Captioner.compile`), and their flags."""

import argparse
import dataclasses

import keras
import numpy as np
import pytest
from decoding_helpers import check_convention, random_captions, random_images, teacher_forced, tiny_captioner

from kcap.model.attention import doubly_stochastic_penalty
from kcap.model.samplers import BeamSampler
from kcap.text.vocabulary import Vocabulary
from kcap.training.config import TrainConfig
from kcap.training.flags import add_train_arguments, train_config
from kcap.training.trainer import build_captioner, decoder_options

OPTIONS = {"context_gate": True, "deep_output": True}


def test_the_attention_penalty_is_numpys_over_the_words_only():
    weights = np.random.default_rng(0).dirichlet(np.ones(6), size=(3, 5)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    expected = ((1.0 - (weights * mask[..., None]).sum(axis=1)) ** 2).sum(axis=-1)
    np.testing.assert_allclose(doubly_stochastic_penalty(weights, mask).numpy(), expected, rtol=1e-6)


def test_a_gru_captioner_with_the_options_trains_decodes_and_reloads(tmp_path):
    vocabulary_size, max_length = 12, 6
    model = tiny_captioner(vocabulary_size, max_length, decoder_options=OPTIONS)
    assert model.get_config()["decoder_options"] == OPTIONS
    assert {"context_gate", "deep_state", "deep_context"} <= {w.path.split("/")[-2] for w in model.decoder.weights}
    images = random_images(8)
    captions = random_captions(8, vocabulary_size, max_length)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False, label_smoothing=0.1,
                  attention_regularizer=1.0)
    before = {w.path: w.numpy() for w in model.decoder.weights}
    losses = model.fit(images, captions, batch_size=4, epochs=2, verbose=0).history["loss"]
    assert np.isfinite(losses).all()
    assert all(not np.array_equal(w.numpy(), before[w.path]) for w in model.decoder.weights)  # the new layers learn too

    # Without XLA, which compiles each sampler for seconds and is the same for every decoder.
    greedy = model.generate(images, jit_compile=False)
    beam_one = model.generate(images, BeamSampler(beam_size=1), jit_compile=False)
    np.testing.assert_array_equal(beam_one[0].numpy(), greedy[0].numpy())
    np.testing.assert_allclose(beam_one[2].numpy(), greedy[2].numpy(), rtol=1e-6)
    ids, attention, scores = model.generate(images, beam_size=3, jit_compile=False)
    check_convention(ids, attention, max_length)
    forced, _, _ = teacher_forced(model, images, ids.numpy())
    np.testing.assert_allclose(scores.numpy(), forced, rtol=1e-4, atol=1e-4)

    model.save(tmp_path / "sat.keras")
    reloaded = keras.saving.load_model(tmp_path / "sat.keras")  # compiled: the objective's settings too
    assert (reloaded.label_smoothing, reloaded.attention_regularizer) == (0.1, 1.0)
    assert reloaded.decoder.use_context_gate and reloaded.decoder.deep_output
    reloaded_ids, _, reloaded_scores = reloaded.generate(images, beam_size=3, jit_compile=False)
    np.testing.assert_array_equal(reloaded_ids.numpy(), ids.numpy())
    np.testing.assert_allclose(reloaded_scores.numpy(), scores.numpy(), rtol=1e-6)


def test_flags_reach_the_config_and_a_config_without_them_has_the_defaults():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = train_config(parser.parse_args([
        "--data", "synthetic", "--context-gate", "--deep-output", "--label-smoothing", "0.1",
        "--attention-regularizer", "1",
    ]))
    assert (config.label_smoothing, config.attention_regularizer) == (0.1, 1.0)
    assert decoder_options(config) == OPTIONS
    assert decoder_options(dataclasses.replace(config, deep_output=False)) == {"context_gate": True}
    small = dataclasses.replace(config, embedding_dim=8, units=8, synthetic_image_size=64).resolved()
    model = build_captioner(small, Vocabulary.build(["a red circle"]))
    assert model.decoder.use_context_gate and model.decoder.deep_output
    assert (model.label_smoothing, model.attention_regularizer) == (0.1, 1.0)
    defaults = train_config(parser.parse_args(["--data", "synthetic", "--no-context-gate"]))
    assert defaults == TrainConfig(data="synthetic") and decoder_options(defaults) is None
    # A config.json written before these settings existed.
    new = ("context_gate", "deep_output", "label_smoothing", "attention_regularizer")
    old = {key: value for key, value in defaults.to_json().items() if key not in new}
    assert TrainConfig.from_json(old) == defaults
    from tuning.hypermodel import validate_search_space

    space = {"label_smoothing": {"type": "choice", "values": [0.0, 0.1]}, "context_gate": {"type": "boolean"},
             "attention_regularizer": {"type": "float", "min": 0.0, "max": 1.0, "step": 0.5}}
    assert validate_search_space(space) == space  # tuner hyperparameters
    for settings, message in (
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
        ({"attention_regularizer": -1.0}, "attention_regularizer must be 0 or more"),
        ({"decoder": "transformer", "deep_output": True}, "options of the gru_attention decoder"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(data="synthetic", **settings).validate()
