"""`kcap.model.samplers.greedy`: the most likely word at each step."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from decoding_helpers import MarkovDecoder, check_convention, teacher_forced

from kcap.model.decoders import AttentionDecoder
from kcap.model.samplers import BeamSampler, GreedySampler, get_sampler
from kcap.text.vocabulary import END_ID, START_ID


@pytest.mark.parametrize("sampler", [GreedySampler(), BeamSampler(beam_size=2)])
def test_a_decoder_never_called_before_decodes_and_then_teacher_forces(sampler):
    decoder = AttentionDecoder(vocabulary_size=12, embedding_dim=8, units=16)
    features = keras.random.normal((2, 9, 8), seed=0)
    ids = sampler(decoder, features, 5)[0]
    assert tuple(ids.shape) == (2, 6)
    built = [w.path for w in decoder.weights]
    logits, _ = decoder(ids, features)
    # The teacher-forced call uses the weights decoding built, and makes none.
    assert tuple(logits.shape) == (2, 6, 12) and [w.path for w in decoder.weights] == built


def test_greedy_follows_the_likeliest_word_of_a_table():
    # After <start>: a; after a: b; after b: <end>. Each the likeliest, but not certain.
    a, b = 4, 5
    table = np.full((6, 6), 0.1)
    table[START_ID, a] = table[a, b] = table[b, END_ID] = 0.5
    table = table / table.sum(1, keepdims=True)
    ids, attention, scores = GreedySampler()(MarkovDecoder(table), tf.zeros([2, 3, 2]), tf.constant(4))
    assert ids.numpy().tolist() == [[a, b, END_ID, 0, 0]] * 2
    check_convention(ids, attention, 4)
    expected = np.log(table[START_ID, a]) + np.log(table[a, b]) + np.log(table[b, END_ID])
    np.testing.assert_allclose(scores.numpy(), [expected] * 2, rtol=1e-6)


def test_greedy_scores_and_attention_are_the_teacher_forced_ones(trained):
    run, _, inputs = trained
    model = run.model
    ids, attention, scores = model.decode(model.encode(inputs), GreedySampler())
    check_convention(ids, attention, model.max_length)
    forced_scores, forced_attention, lengths = teacher_forced(model, inputs, ids.numpy())
    np.testing.assert_allclose(scores.numpy(), forced_scores, rtol=1e-4, atol=1e-4)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(attention.numpy()[i, :n], forced_attention[i, :n], atol=1e-5)
    # The compiled generate is the same loop.
    np.testing.assert_array_equal(model.generate(inputs, "greedy")[0].numpy(), ids.numpy())


def test_get_sampler_takes_names_and_instances():
    greedy = GreedySampler()
    assert get_sampler(greedy) is greedy and isinstance(get_sampler("greedy"), GreedySampler)
    with pytest.raises(ValueError, match=r"Unknown sampler 'gredy'; give one of \['beam', 'greedy', 'random'\]"):
        get_sampler("gredy")
