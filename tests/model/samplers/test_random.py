"""`kcap.model.samplers.random`: words drawn at a temperature, optionally among the top k, reproducibly."""

import numpy as np
import pytest
import tensorflow as tf
from decoding_helpers import MarkovDecoder, check_convention, teacher_forced

from kcap.model.samplers import GreedySampler, RandomSampler
from kcap.text.vocabulary import END_ID, PAD_ID, START_ID


def _smallest_greedy_margin(model, inputs, ids):
    """Smallest gap between the best and second-best logit along greedy captions."""
    from kcap.model.samplers import caption_lengths

    tokens = np.concatenate([np.full((len(ids), 1), START_ID, "int32"), ids[:, :-1]], axis=1)
    logits, _ = model.decoder(tokens, model.encode(inputs))
    top_two = np.sort(np.asarray(logits, "float32"), axis=-1)[..., -2:]
    gaps = top_two[..., 1] - top_two[..., 0]
    return min(gaps[i, :n].min() for i, n in enumerate(caption_lengths(ids).numpy()))


def test_sampling_is_reproducible_and_cold_sampling_is_greedy(trained):
    run, _, inputs = trained
    model = run.model
    first = model.generate(inputs, temperature=1.5, seed=7)
    again = model.generate(inputs, RandomSampler(temperature=1.5, seed=7))
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    np.testing.assert_array_equal(first[2].numpy(), again[2].numpy())
    check_convention(first[0], first[1], model.max_length)
    others = [model.generate(inputs, temperature=1.5, seed=s)[0].numpy() for s in (8, 9)]
    assert any((o != first[0].numpy()).any() for o in others), "different seeds gave the same captions"
    # The score is the model's own log-probability of the sampled caption.
    forced_scores, _, _ = teacher_forced(model, inputs, first[0].numpy())
    np.testing.assert_allclose(first[2].numpy(), forced_scores, rtol=1e-4, atol=1e-4)

    # As the temperature goes to 0, sampling becomes greedy. The tiny model has
    # near-ties (top-two logit gaps of a few thousandths), so "cold" is set
    # from its own greedy captions: at most 0.01, and cold enough that any
    # other word has probability below e^-40 at every step.
    greedy = model.generate(inputs)
    temperature = min(0.01, _smallest_greedy_margin(model, inputs, greedy[0].numpy()) / 40)
    assert temperature > 0, "an exact tie in the greedy captions"
    cold = model.generate(inputs, temperature=temperature, seed=3)
    np.testing.assert_array_equal(cold[0].numpy(), greedy[0].numpy())
    np.testing.assert_allclose(cold[2].numpy(), greedy[2].numpy(), rtol=1e-5)
    # Colder than float32 can hold (1e-50 is 0 there; 1e-38 overflows the division): still greedy.
    for frozen in (1e-38, 1e-50):
        np.testing.assert_array_equal(model.generate(inputs, temperature=frozen, seed=3)[0].numpy(), greedy[0].numpy())


def _flat_table(vocabulary_size=10):
    """After every word, each of the others about as likely; <end> rarer, so captions run long."""
    table = np.linspace(1.0, 1.5, vocabulary_size)[None, :].repeat(vocabulary_size, 0)
    table[:, [PAD_ID, START_ID]] = 0.0
    table[:, END_ID] = 0.3
    return table / table.sum(1, keepdims=True)


def test_top_k_draws_only_among_the_likeliest_words():
    table = _flat_table()
    decoder, encoded, max_length = MarkovDecoder(table), tf.zeros([64, 3, 2]), tf.constant(6)
    likeliest = set(np.argsort(table[4])[-3:].tolist())  # the rows are all alike
    assert END_ID not in likeliest
    ids, attention, scores = RandomSampler(temperature=1.0, top_k=3, seed=0)(decoder, encoded, max_length)
    check_convention(ids, attention, 6)
    words = ids.numpy()[:, :6]
    assert set(words.ravel().tolist()) == likeliest  # every caption runs to the forced <end>
    # Scores stay the model's own log-probabilities, not those of the cut distribution.
    expected = np.log(table[START_ID, words[:, 0]]) + np.log(table[words[:, :-1], words[:, 1:]]).sum(1)
    np.testing.assert_allclose(scores.numpy(), expected + np.log(table[words[:, -1], END_ID]), rtol=1e-5)
    # All words can be drawn without top_k; top_k=1 is greedy.
    unlimited = RandomSampler(temperature=1.0, seed=0)(decoder, encoded, max_length)[0].numpy()
    assert len(set(unlimited.ravel().tolist()) - likeliest - {END_ID, PAD_ID}) > 0
    one = RandomSampler(temperature=5.0, top_k=1, seed=4)(decoder, encoded, max_length)
    greedy = GreedySampler()(decoder, encoded, max_length)
    np.testing.assert_array_equal(one[0].numpy(), greedy[0].numpy())


def test_a_new_temperature_or_seed_does_not_retrace(trained):
    run, _, inputs = trained
    model = run.model
    model.generate(inputs, temperature=0.9, seed=1)
    function = model._decode_function(RandomSampler(), True)
    traced = function.experimental_get_tracing_count()
    for temperature, seed in ((0.5, 2), (1.3, 3)):
        model.generate(inputs, temperature=temperature, seed=seed)
    assert function.experimental_get_tracing_count() == traced
    # top_k is part of the graph: a new function, the first one untouched.
    model.generate(inputs, RandomSampler(top_k=2))
    assert function.experimental_get_tracing_count() == traced


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be a positive number, got 0.0"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_k": 0}, "top_k must be None or an integer >= 1, got 0"),
])
def test_bad_sampling_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomSampler(**kwargs)
