"""The n-gram guard of greedy decoding and beam search (`no_repeat_ngram`)."""

import numpy as np
import pytest
import tensorflow as tf
from decoding_helpers import (
    MarkovDecoder,
    check_convention,
    reference_beam_search,
    repeats_ngram,
    teacher_forced,
)

from kcap.model.samplers import BeamSampler, GreedySampler, caption_lengths, sampler_for
from kcap.text.vocabulary import PAD_ID, START_ID


def _words(ids):
    """Each caption's words, <end> and padding left out."""
    return [row[: n - 1].tolist() for row, n in zip(np.asarray(ids), caption_lengths(ids).numpy())]


def _repeated_ngrams(captions, n):
    return [c for c in captions if any(repeats_ngram(c[:i], c[i], n) for i in range(len(c)))]


def _looping_table(vocabulary_size=9):
    """A Markov table whose likeliest caption is "4 5 4 5 4 5 ...", with every word possible after each."""
    table = np.full((vocabulary_size, vocabulary_size), 0.02)
    table[:, PAD_ID] = table[:, START_ID] = 0.0
    table[START_ID, 4] = table[4, 5] = table[5, 4] = 1.0
    table[:, 6] = 0.3  # the likeliest way out of the loop
    return table / table.sum(1, keepdims=True)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_guarded_beam_search_matches_a_plain_reference_and_beam_one_is_guarded_greedy(n, beam_size):
    rng = np.random.default_rng(10 * n + beam_size)
    max_length, encoded = 7, tf.zeros([1, 4, 2])
    tables = [_looping_table()] + [_looping_table() * rng.gamma(0.5, size=(9, 9)) for _ in range(3)]
    for trial, table in enumerate(tables):
        decoder = MarkovDecoder(table / table.sum(1, keepdims=True))
        ids, attention, scores = BeamSampler(beam_size, 0.7, no_repeat_ngram=n)(decoder, encoded, tf.constant(max_length))
        check_convention(ids, attention, max_length)
        (_, raw, words), = reference_beam_search(decoder, encoded, max_length, beam_size, 0.7, no_repeat_ngram=n)
        assert ids.numpy()[0, : len(words)].tolist() == words, trial
        np.testing.assert_allclose(scores.numpy()[0], raw, rtol=1e-5)
        assert not _repeated_ngrams(_words(ids), n), trial
        if beam_size == 1:
            greedy = GreedySampler(no_repeat_ngram=n)(decoder, encoded, tf.constant(max_length))
            np.testing.assert_array_equal(greedy[0].numpy(), ids.numpy())
            np.testing.assert_allclose(greedy[2].numpy(), scores.numpy(), rtol=1e-6)
    # Unguarded, the first table's caption loops.
    unguarded = GreedySampler()(MarkovDecoder(_looping_table()), encoded, tf.constant(max_length))
    assert _words(unguarded[0]) == [[4, 5, 4, 5, 4, 5, 4]]


def test_the_guard_on_the_trained_model_compiled(trained):
    # Beam search with the guard, on this model and compiled, is checked by its export (tests/export).
    run, _, inputs = trained
    model = run.model
    greedy = model.generate(inputs)
    off = model.generate(inputs, no_repeat_ngram=0)  # 0 is off: today's captions and scores
    np.testing.assert_array_equal(off[0].numpy(), greedy[0].numpy())
    np.testing.assert_array_equal(off[2].numpy(), greedy[2].numpy())
    # The synthetic captions say "a" twice ("a red circle above a blue square"): 1 forbids it.
    assert _repeated_ngrams(_words(greedy[0]), 1)
    ids, attention, scores = model.generate(inputs, no_repeat_ngram=1)
    check_convention(ids, attention, model.max_length)
    assert not _repeated_ngrams(_words(ids), 1)
    # The scores stay the model's own log-probabilities of the captions.
    forced, _, _ = teacher_forced(model, inputs, ids.numpy())
    np.testing.assert_allclose(scores.numpy(), forced, rtol=1e-4, atol=1e-4)
    beam_one = model.generate(inputs, BeamSampler(beam_size=1, no_repeat_ngram=1))
    np.testing.assert_array_equal(beam_one[0].numpy(), ids.numpy())
    np.testing.assert_allclose(beam_one[2].numpy(), scores.numpy(), rtol=1e-5)


def test_the_guard_is_part_of_the_sampler_and_refused_where_it_does_not_apply():
    assert repr(sampler_for(beam_size=3, no_repeat_ngram=2)) == "BeamSampler(beam_size=3, length_penalty=0.7, no_repeat_ngram=2)"
    assert GreedySampler(2).trace_key() != GreedySampler().trace_key()
    assert repr(GreedySampler(0)) == "GreedySampler()"  # off: the sampler of before
    with pytest.raises(ValueError, match="not sampling"):
        sampler_for(temperature=0.5, no_repeat_ngram=2)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="no_repeat_ngram must be an integer >= 0"):
            BeamSampler(no_repeat_ngram=bad)
