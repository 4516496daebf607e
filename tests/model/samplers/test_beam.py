"""`kcap.model.samplers.beam`: beam search with the GNMT length penalty."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from decoding_helpers import (
    MarkovDecoder,
    check_convention,
    normalised,
    peaky_captioner,
    random_images,
    reference_beam_search,
    teacher_forced,
    tiny_captioner,
)

from kcap.model.samplers import BeamSampler, GreedySampler, caption_lengths, length_penalty
from kcap.text.vocabulary import END_ID, PAD_ID, START_ID

# -- beam size 1 is greedy -----------------------------------------------------


def _assert_beam_one_is_greedy(model, inputs):
    greedy = model.generate(inputs)
    beam = BeamSampler(beam_size=1)(model.decoder, model.encode(inputs), tf.constant(model.max_length))
    np.testing.assert_array_equal(beam[0].numpy(), greedy[0].numpy())
    np.testing.assert_allclose(beam[2].numpy(), greedy[2].numpy(), rtol=1e-6)
    np.testing.assert_allclose(beam[1].numpy(), greedy[1].numpy(), rtol=1e-6, atol=1e-7)
    return greedy[0].numpy()


@pytest.mark.parametrize("end_bias", [None, 0.1])
def test_beam_one_equals_greedy_on_a_fresh_model(end_bias):
    # Without help a fresh model never ends a caption; with a small <end> bias
    # its captions end after various numbers of words.
    model = tiny_captioner() if end_bias is None else peaky_captioner(12, max_length=6, end_bias=end_bias)
    _assert_beam_one_is_greedy(model, random_images(6))


def test_beam_one_equals_greedy_on_the_trained_model(trained):
    run, _, inputs = trained
    ids = _assert_beam_one_is_greedy(run.model, inputs)
    # The trained model ends its captions by itself, after various numbers of words.
    lengths = caption_lengths(ids).numpy()
    assert (lengths <= run.model.max_length).all() and len(set(lengths)) > 1, lengths


# -- beam search finds better captions -----------------------------------------


@pytest.mark.parametrize("beam_size", [3, 5])
def test_beam_search_beats_greedy_over_the_split_and_matches_teacher_forcing(trained, beam_size):
    run, _, inputs = trained
    model, alpha = run.model, 0.7
    greedy_ids, _, greedy_scores = model.generate(inputs)
    ids, attention, scores = model.generate(inputs, beam_size=beam_size, length_penalty=alpha)
    assert np.isfinite(scores.numpy()).all()
    check_convention(ids, attention, model.max_length)
    beam_norm = normalised(ids, scores, alpha)
    greedy_norm = normalised(greedy_ids, greedy_scores, alpha)
    # Beam search may prune the greedy caption's prefix, so an image can lose a little; over the
    # split it wins. (Exactness is checked against a plain reference in the tests below.)
    no_worse = beam_norm >= greedy_norm - 1e-5
    assert no_worse.mean() >= 0.75 and beam_norm.mean() > greedy_norm.mean(), (beam_norm, greedy_norm)
    # The score is the real log-probability of the returned caption, and the
    # attention is that caption's own history, reordered through the backpointers.
    forced_scores, forced_attention, lengths = teacher_forced(model, inputs, ids.numpy())
    np.testing.assert_allclose(scores.numpy(), forced_scores, rtol=1e-4, atol=1e-4)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(attention.numpy()[i, :n], forced_attention[i, :n], atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0])
def test_a_wide_beam_finds_the_exhaustive_best_caption(alpha):
    vocabulary_size, max_length = 6, 3
    model = peaky_captioner(vocabulary_size)
    inputs = random_images(2, seed=4)
    words = [i for i in range(vocabulary_size) if i != END_ID]
    # Every caption of 0..max_length words: each is scored by teacher forcing.
    captions = [
        list(w) + [END_ID] + [PAD_ID] * (max_length - len(w))
        for n in range(max_length + 1) for w in itertools.product(words, repeat=n)
    ]
    best = []
    for image in range(2):
        one = {"images": inputs["images"][image:image + 1].repeat(len(captions), 0)}
        scores, _, lengths = teacher_forced(model, one, np.array(captions, "int32"))
        best.append((scores / length_penalty(lengths, alpha).numpy()).max())
    # A beam wider than the number of prefixes keeps every one: exhaustive.
    encoded = model.encode(inputs)
    ids, _, scores = BeamSampler(len(words) ** max_length, alpha)(model.decoder, encoded, tf.constant(max_length))
    np.testing.assert_allclose(normalised(ids, scores, alpha), best, rtol=1e-4)
    # A narrower beam never reports more than the optimum.
    ids, _, scores = BeamSampler(2, alpha)(model.decoder, encoded, tf.constant(max_length))
    assert (normalised(ids, scores, alpha) <= np.array(best) + 1e-4).all()


def _random_markov_table(rng, vocabulary_size, end_weight):
    table = rng.gamma(0.3, size=(vocabulary_size, vocabulary_size))  # spiky rows
    table[:, PAD_ID] = 0.0  # only real words and <end>, as a trained model would
    table[:, START_ID] = 0.0
    table[:, END_ID] = end_weight * table.sum(1)
    return table / table.sum(1, keepdims=True)


@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0])
@pytest.mark.parametrize("beam_size", [2, 4])
def test_beam_search_matches_a_plain_reference_on_random_markov_decoders(alpha, beam_size):
    rng = np.random.default_rng(int(alpha * 10) + beam_size)
    max_length = 6
    encoded = tf.zeros([1, 4, 2])
    for trial in range(12):
        decoder = MarkovDecoder(_random_markov_table(rng, 9, end_weight=rng.uniform(0.05, 0.6)))
        ids, attention, scores = BeamSampler(beam_size, alpha)(decoder, encoded, tf.constant(max_length))
        check_convention(ids, attention, max_length)
        (_, raw, words), = reference_beam_search(decoder, encoded, max_length, beam_size, alpha)
        assert ids.numpy()[0, : len(words)].tolist() == words, trial
        np.testing.assert_allclose(scores.numpy()[0], raw, rtol=1e-5)


def _pushed_out_table() -> tuple[np.ndarray, int, int]:
    """A Markov table whose best caption, the empty one, is pushed out of a beam of 2; and the words a, x.

    After <start>: "a" 0.7, <end> 0.25. Beam 2 keeps ["a", "<end>"].
    After "a": "x" 0.55, "y" 0.45. "a x" (0.385) and "a y" (0.315) both
    beat the finished "<end>" (0.25) and push it out of the beam.
    Every continuation after that costs at least a factor 1/4, so the empty
    caption (probability 0.25) is the best.
    """
    a, x, y, z = 4, 5, 6, 7
    table = np.full((8, 8), 1e-9)
    table[START_ID, [a, END_ID, z]] = [0.7, 0.25, 0.05 - 6e-9]
    for word in (a, x, y, z):
        table[word, [x, y, z, END_ID]] = [0.25, 0.25, 0.25, 0.25]
    table[a, [x, y, z, END_ID]] = [0.55, 0.45, 0.0, 0.0]
    table = table / table.sum(1, keepdims=True)
    return table, a, x


def test_a_finished_caption_pushed_out_of_the_beam_is_still_returned():
    # Greedy returns a worse caption than the pushed-out empty one.
    table, a, x = _pushed_out_table()
    decoder, encoded, max_length = MarkovDecoder(table), tf.zeros([1, 4, 2]), tf.constant(5)
    ids, _, scores = BeamSampler(beam_size=2, length_penalty=0.0)(decoder, encoded, max_length)
    assert ids.numpy()[0].tolist() == [END_ID, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(scores.numpy(), np.log([table[START_ID, END_ID]]), rtol=1e-5)
    greedy_ids, _, greedy_scores = GreedySampler()(decoder, encoded, max_length)
    assert greedy_ids.numpy()[0, :2].tolist() == [a, x] and greedy_scores.numpy()[0] < scores.numpy()[0]


def test_candidates_are_distinct_finished_captions_best_first_led_by_the_beams_caption(alpha=0.7):
    rng = np.random.default_rng(7)
    encoded, max_length = tf.zeros([2, 4, 2]), tf.constant(6)
    for trial in range(4):
        decoder = MarkovDecoder(_random_markov_table(rng, 9, end_weight=rng.uniform(0.05, 0.6)))
        sampler = BeamSampler(3, alpha)
        ids, attention, scores = sampler.candidates(decoder, encoded, max_length)
        best_ids, best_attention, best_scores = sampler(decoder, encoded, max_length)
        assert ids.shape[:2] == (2, 3) and attention.shape[:2] == (2, 3)
        np.testing.assert_array_equal(ids[:, 0], best_ids)
        np.testing.assert_array_equal(scores[:, 0], best_scores)
        np.testing.assert_array_equal(attention[:, 0], best_attention)
        for image in range(2):
            found = np.isfinite(scores[image].numpy())
            rows = ids[image].numpy()[found]
            assert found[0] and len({tuple(r) for r in rows}) == len(rows), trial
            assert (np.sum(rows == END_ID, axis=1) == 1).all()
            ranked = normalised(rows, scores[image].numpy()[found], alpha)
            assert (np.diff(ranked) <= 1e-6).all(), trial


def test_candidates_keep_a_finished_caption_pushed_out_of_the_beam():
    # "<end>" alone is best; "a x ..." and "a y ..." finish later.
    table, a, _ = _pushed_out_table()
    ids, _, scores = BeamSampler(beam_size=2, length_penalty=0.0).candidates(
        MarkovDecoder(table), tf.zeros([1, 4, 2]), tf.constant(5)
    )
    assert ids.numpy()[0, 0].tolist() == [END_ID, 0, 0, 0, 0, 0]
    assert ids.numpy()[0, 1, 0] == a and scores.numpy()[0, 1] < scores.numpy()[0, 0]


def test_beam_search_matches_the_plain_reference_on_the_trained_model(trained):
    run, _, inputs = trained
    model = run.model
    encoded = model.encode({"images": inputs["images"][:3]})
    max_length = model.max_length
    ids, _, scores = BeamSampler(3, 0.7)(model.decoder, encoded, tf.constant(max_length))
    for i, (_, raw, words) in enumerate(reference_beam_search(model.decoder, encoded, max_length, 3, 0.7)):
        assert ids.numpy()[i, : len(words)].tolist() == words
        np.testing.assert_allclose(scores.numpy()[i], raw, rtol=1e-5)


class LagTwoDecoder(MarkovDecoder):
    """A Markov table read one word late, with a nested state: the next word depends on the one before last.

    The state holds the last word and, in a tuple, the word before it and a
    step count: beam search must move all of them with their beam, or the
    next logits come from another caption's history.
    """

    def start(self, memory, max_length):
        batch = tf.shape(memory)[0]
        start = tf.one_hot(tf.fill([batch], START_ID), self.table.shape[0])
        return {"last": start, "before": (start, tf.zeros([batch], tf.int32))}

    def step(self, tokens, state, memory):
        before, count = state["before"]
        # One-hot rows times the table; -inf (log 0) held at -1e9 so that 0 * it is 0.
        logits = tf.matmul(before, tf.maximum(self.table, -1e9))
        _, _, weights = super().step(tokens, state, memory)
        return logits, {"last": tf.one_hot(tokens, self.table.shape[0]), "before": (state["last"], count + 1)}, weights


def test_beam_search_reorders_every_tensor_of_a_nested_state():
    # <end> is rare here, so captions run long and beams swap places.
    rng = np.random.default_rng(5)
    encoded, max_length = tf.zeros([2, 3, 2]), 6
    for trial in range(12):
        decoder = LagTwoDecoder(_random_markov_table(rng, 9, end_weight=rng.uniform(0.005, 0.05)))
        beam_size = 2 + trial % 3
        ids, attention, scores = BeamSampler(beam_size, 0.7)(decoder, encoded, tf.constant(max_length))
        check_convention(ids, attention, max_length)
        for i, (_, raw, words) in enumerate(reference_beam_search(decoder, encoded, max_length, beam_size, 0.7)):
            assert ids.numpy()[i, : len(words)].tolist() == words, trial
            np.testing.assert_allclose(scores.numpy()[i], raw, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"beam_size": 0}, "beam_size must be an integer >= 1, got 0"),
    ({"beam_size": 2.5}, "beam_size"),
    ({"length_penalty": -0.5}, "length_penalty must be a number >= 0, got -0.5"),
    ({"length_penalty": float("nan")}, "length_penalty"),
])
def test_bad_beam_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BeamSampler(**kwargs)
