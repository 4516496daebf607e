"""Greedy decoding, beam search and temperature sampling (kcap.model.decoding).

Conventions under test (see the kcap.model.decoding docstring): ids are
(batch, max_length + 1) with the words, exactly one `<end>`, then 0s. A
caption that does not end within `max_length` words gets `<end>` forced in
the last slot, and its real log-probability counts in the score.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcap.data.pipeline import image_dataset
from kcap.inference import load_run
from kcap.model.backbones import build_backbone
from kcap.model.captioner import Captioner
from kcap.model.decoding import beam_search, caption_lengths, greedy_decode, length_penalty
from kcap.text.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID


def _tiny_captioner(vocabulary_size=12, max_length=6, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = build_backbone("small_cnn", weights=None, image_size=64)
    return Captioner(
        backbone, vocabulary_size, max_length, (64, 64), embedding_dim=16, units=32,
        preprocessing="scale", train_backbone=True,
    )


def _random_images(n, seed=0):
    return {"images": np.random.default_rng(seed).integers(0, 255, (n, 64, 64, 3)).astype("uint8")}


@pytest.fixture(scope="module")
def trained(trained_run):
    """The conftest run's model with its test images, as paths and as a batch."""
    run = load_run(trained_run)
    paths = [item["image"] for item in run.run.load_splits()["splits"]["test"]]
    batches = image_dataset(paths, run.image_size, batch_size=64)
    images = np.concatenate([batch["images"].numpy() for batch in batches])
    return run, paths, {"images": images}


def _normalised(ids, scores, alpha):
    return np.asarray(scores) / length_penalty(caption_lengths(ids), alpha).numpy()


def _teacher_forced(model, inputs, ids):
    """Log-probability of each decoded caption and its attention, by teacher forcing.

    This is an independent re-computation through `decoder.call`, so it
    checks that a decoder's ids, scores and attention belong together.
    """
    ids = np.asarray(ids)
    tokens = np.concatenate([np.full((len(ids), 1), START_ID, "int32"), ids[:, :-1]], axis=1)
    encoded = model.encode(inputs)
    logits, attention = model.decoder(tokens, encoded)
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32)).numpy()
    lengths = caption_lengths(ids).numpy()
    scores = np.array([
        log_probs[i, np.arange(n), ids[i, :n]].sum() for i, n in enumerate(lengths)
    ])
    return scores, np.asarray(attention), lengths


def _smallest_greedy_margin(model, inputs, ids):
    """Smallest gap between the best and second-best logit along greedy captions."""
    tokens = np.concatenate([np.full((len(ids), 1), START_ID, "int32"), ids[:, :-1]], axis=1)
    logits, _ = model.decoder(tokens, model.encode(inputs))
    top_two = np.sort(np.asarray(logits, "float32"), axis=-1)[..., -2:]
    gaps = top_two[..., 1] - top_two[..., 0]
    return min(gaps[i, :n].min() for i, n in enumerate(caption_lengths(ids).numpy()))


def _check_convention(ids, attention, max_length):
    """One <end> per row, only padding after it, attention rows sum to 1 up to <end>."""
    ids, attention = np.asarray(ids), np.asarray(attention)
    assert ids.shape[1] == max_length + 1 and attention.shape[1] == max_length + 1
    for row, weights in zip(ids, attention):
        ends = np.flatnonzero(row == END_ID)
        assert ends.size == 1, row
        assert (row[ends[0] + 1:] == PAD_ID).all(), row
        np.testing.assert_allclose(weights[: ends[0] + 1].sum(-1), 1.0, rtol=1e-5)
        assert (weights[ends[0] + 1:] == 0).all()


# -- beam size 1 is greedy -----------------------------------------------------


def _assert_beam_one_is_greedy(model, inputs):
    greedy = model.generate(inputs)
    beam = beam_search(model.decoder, model.encode(inputs), tf.constant(model.max_length), beam_size=1)
    np.testing.assert_array_equal(beam[0].numpy(), greedy[0].numpy())
    np.testing.assert_allclose(beam[2].numpy(), greedy[2].numpy(), rtol=1e-6)
    np.testing.assert_allclose(beam[1].numpy(), greedy[1].numpy(), rtol=1e-6, atol=1e-7)
    return greedy[0].numpy()


@pytest.mark.parametrize("end_bias", [None, 0.1])
def test_beam_one_equals_greedy_on_a_fresh_model(end_bias):
    # Without help a fresh model never ends a caption; with a small <end> bias
    # its captions end after various numbers of words.
    model = _tiny_captioner() if end_bias is None else _peaky_captioner(12, max_length=6, end_bias=end_bias)
    _assert_beam_one_is_greedy(model, _random_images(6))


@pytest.mark.parametrize("decode", [greedy_decode, lambda d, f, n: beam_search(d, f, n, beam_size=2)])
def test_a_decoder_never_called_before_decodes_and_then_teacher_forces(decode):
    from kcap.model.decoder import AttentionDecoder

    decoder = AttentionDecoder(vocabulary_size=12, embedding_dim=8, units=16)
    features = keras.random.normal((2, 9, 8), seed=0)
    ids = decode(decoder, features, 5)[0]
    assert tuple(ids.shape) == (2, 6)
    built = [w.path for w in decoder.weights]
    logits, _ = decoder(ids, features)
    # The teacher-forced call uses the weights decoding built, and makes none.
    assert tuple(logits.shape) == (2, 6, 12) and [w.path for w in decoder.weights] == built


def test_beam_one_equals_greedy_on_the_trained_model(trained):
    run, _, inputs = trained
    ids = _assert_beam_one_is_greedy(run.model, inputs)
    # The trained model ends its captions by itself, after various numbers of words.
    lengths = caption_lengths(ids).numpy()
    assert (lengths <= run.model.max_length).all() and len(set(lengths)) > 1, lengths


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_one_image_alone_gets_the_caption_it_gets_in_a_batch(trained_run, trained, beam_size, jit_compile):
    # A freshly loaded model: its first trace sees a batch of one, as `kcap caption
    # --beam-size 3 photo.jpg` does (beam search then failed its loop's shape check).
    model = load_run(trained_run).model
    _, _, inputs = trained
    alone = [model.generate({"images": inputs["images"][i:i + 1]}, beam_size=beam_size, jit_compile=jit_compile)
             for i in range(4)]  # first, so that the first trace is of one image
    batch = model.generate(inputs, beam_size=beam_size, jit_compile=jit_compile)
    for i, (ids, _, scores) in enumerate(alone):
        np.testing.assert_array_equal(ids.numpy()[0], batch[0].numpy()[i])
        np.testing.assert_allclose(scores.numpy()[0], batch[2].numpy()[i], rtol=1e-4)


# -- the length limit ----------------------------------------------------------


def test_a_model_that_never_ends_stops_at_max_length_in_every_mode():
    model = _tiny_captioner()
    bias = model.decoder.logits.bias
    bias.assign(tf.tensor_scatter_nd_update(bias, [[END_ID]], [-1e9]))
    inputs = _random_images(3)
    max_length = 4
    results = {
        "greedy": model.generate(inputs, max_length=max_length),
        "beam 3": model.generate(inputs, max_length=max_length, beam_size=3),
        "sampling": model.generate(inputs, max_length=max_length, temperature=1.0, seed=1),
    }
    for mode, (ids, attention, scores) in results.items():
        ids, scores = ids.numpy(), scores.numpy()
        assert ids.shape == (3, max_length + 1), mode
        # max_length words (never <end>), then the forced <end>.
        assert (ids[:, :max_length] != END_ID).all(), mode
        assert (ids[:, max_length] == END_ID).all(), mode
        _check_convention(ids, attention, max_length)
        # The forced <end> costs its real log-probability (about -1e9), finite.
        assert np.isfinite(scores).all() and (scores < -1e8).all(), (mode, scores)


# -- beam search finds better captions -----------------------------------------


@pytest.mark.parametrize("beam_size", [3, 5])
def test_beam_search_beats_greedy_over_the_split_and_matches_teacher_forcing(trained, beam_size):
    run, _, inputs = trained
    model, alpha = run.model, 0.7
    greedy_ids, _, greedy_scores = model.generate(inputs)
    ids, attention, scores = model.generate(inputs, beam_size=beam_size, length_penalty=alpha)
    assert np.isfinite(scores.numpy()).all()
    _check_convention(ids, attention, model.max_length)
    beam_norm = _normalised(ids, scores, alpha)
    greedy_norm = _normalised(greedy_ids, greedy_scores, alpha)
    # Beam search may prune the greedy caption's prefix, so an image can lose a little; over the
    # split it wins. (Exactness is checked against a plain reference in the tests below.)
    no_worse = beam_norm >= greedy_norm - 1e-5
    assert no_worse.mean() >= 0.75 and beam_norm.mean() > greedy_norm.mean(), (beam_norm, greedy_norm)
    # The score is the real log-probability of the returned caption, and the
    # attention is that caption's own history, reordered through the backpointers.
    forced_scores, forced_attention, lengths = _teacher_forced(model, inputs, ids.numpy())
    np.testing.assert_allclose(scores.numpy(), forced_scores, rtol=1e-4, atol=1e-4)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(attention.numpy()[i, :n], forced_attention[i, :n], atol=1e-5)


def _peaky_captioner(vocabulary_size, max_length=3, end_bias=0.0):
    model = _tiny_captioner(vocabulary_size=vocabulary_size, max_length=max_length, seed=3)
    # Sharper word distributions than at initialisation, so captions of
    # different lengths and scores compete.
    kernel, bias = model.decoder.logits.kernel, model.decoder.logits.bias
    kernel.assign(kernel * 8.0)
    bias.assign(tf.tensor_scatter_nd_update(bias, [[END_ID]], [end_bias]))
    return model


@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0])
def test_a_wide_beam_finds_the_exhaustive_best_caption(alpha):
    vocabulary_size, max_length = 6, 3
    model = _peaky_captioner(vocabulary_size)
    inputs = _random_images(2, seed=4)
    words = [i for i in range(vocabulary_size) if i != END_ID]
    # Every caption of 0..max_length words: each is scored by teacher forcing.
    captions = [
        list(w) + [END_ID] + [PAD_ID] * (max_length - len(w))
        for n in range(max_length + 1) for w in itertools.product(words, repeat=n)
    ]
    best = []
    for image in range(2):
        one = {"images": inputs["images"][image:image + 1].repeat(len(captions), 0)}
        scores, _, lengths = _teacher_forced(model, one, np.array(captions, "int32"))
        best.append((scores / length_penalty(lengths, alpha).numpy()).max())
    # A beam wider than the number of prefixes keeps every one: exhaustive.
    ids, _, scores = beam_search(
        model.decoder, model.encode(inputs), tf.constant(max_length),
        beam_size=len(words) ** max_length, length_penalty=alpha,
    )
    np.testing.assert_allclose(_normalised(ids, scores, alpha), best, rtol=1e-4)
    # A narrower beam never reports more than the optimum.
    ids, _, scores = beam_search(
        model.decoder, model.encode(inputs), tf.constant(max_length), beam_size=2, length_penalty=alpha
    )
    assert (_normalised(ids, scores, alpha) <= np.array(best) + 1e-4).all()


class MarkovDecoder:
    """A decoder whose next-word log-probabilities depend only on the last word.

    It has `start`/`step` like `AttentionDecoder`. Because its probabilities are
    written out in a table, a test can build a case with a known best caption
    (and can run many random cases quickly).
    `table[w]` holds the log-probabilities after word `w` (row `START_ID`
    after `<start>`). The attention is spread evenly over the locations.
    """

    def __init__(self, table):
        with np.errstate(divide="ignore"):  # impossible words: log 0 = -inf
            self.table = tf.constant(np.log(np.asarray(table, "float64")), tf.float32)

    def start(self, encoded):
        return tf.zeros([tf.shape(encoded)[0], 1]), encoded

    def step(self, tokens, state, encoded, keys):
        locations = tf.shape(encoded)[1]
        weights = tf.fill([tf.shape(tokens)[0], locations], 1.0 / tf.cast(locations, tf.float32))
        return tf.gather(self.table, tokens), state, weights


def _reference_beam_search(decoder, encoded, max_length, beam_size, alpha):
    """The beam search of `kcap.model.decoding`, written out in Python, one image at a time.

    Hypotheses are Python tuples, and the loop always runs to `max_length`
    with no early stop, so this also checks that stopping early changes
    nothing. Returns `(normalised score, raw score, tokens)` per image.
    """
    results = []
    for image in range(encoded.shape[0]):
        features = encoded[image:image + 1]
        state, keys = decoder.start(features)
        beams = [(0.0, 0.0, [], False, state[0])]  # (normalised, raw, tokens, finished, state)
        best = (-np.inf, None, None)
        for t in range(max_length + 1):
            n = len(beams)
            tokens = np.array([b[2][-1] if b[2] else START_ID for b in beams], "int32")
            logits, states, _ = decoder.step(
                tokens, tf.stack([b[4] for b in beams]), tf.repeat(features, n, 0), tf.repeat(keys, n, 0)
            )
            log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32)).numpy()
            candidates = []
            for b, (norm, raw, words, finished, _) in enumerate(beams):
                if finished:  # stays, with its score and length
                    candidates.append((norm, raw, words, True, states[b]))
                    continue
                allowed = [w for w in range(log_probs.shape[1]) if w not in (PAD_ID, START_ID, UNK_ID)]
                for w in [END_ID] if t == max_length else allowed:
                    new_raw = raw + log_probs[b, w]
                    new_norm = new_raw / float(length_penalty(t + 1, alpha))
                    candidates.append((new_norm, new_raw, words + [w], w == END_ID, states[b]))
            candidates.sort(key=lambda c: -c[0])  # stable: ties keep the lower beam and word
            beams = candidates[:beam_size]
            for norm, raw, words, finished, _ in beams:
                if finished and norm > best[0]:
                    best = (norm, raw, words)
        results.append(best)
    return results


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
        ids, attention, scores = beam_search(
            decoder, encoded, tf.constant(max_length), beam_size, length_penalty=alpha
        )
        _check_convention(ids, attention, max_length)
        (_, raw, words), = _reference_beam_search(decoder, encoded, max_length, beam_size, alpha)
        assert ids.numpy()[0, : len(words)].tolist() == words, trial
        np.testing.assert_allclose(scores.numpy()[0], raw, rtol=1e-5)


def test_a_finished_caption_pushed_out_of_the_beam_is_still_returned():
    # After <start>: "a" 0.7, <end> 0.25. Beam 2 keeps ["a", "<end>"].
    # After "a": "x" 0.55, "y" 0.45. "a x" (0.385) and "a y" (0.315) both
    # beat the finished "<end>" (0.25) and push it out of the beam.
    # Every continuation after that costs at least a factor 1/4, so the empty
    # caption (probability 0.25) is the best. Greedy returns a worse one.
    a, x, y, z = 4, 5, 6, 7
    table = np.full((8, 8), 1e-9)
    table[START_ID, [a, END_ID, z]] = [0.7, 0.25, 0.05 - 6e-9]
    for word in (a, x, y, z):
        table[word, [x, y, z, END_ID]] = [0.25, 0.25, 0.25, 0.25]
    table[a, [x, y, z, END_ID]] = [0.55, 0.45, 0.0, 0.0]
    table = table / table.sum(1, keepdims=True)
    decoder, encoded, max_length = MarkovDecoder(table), tf.zeros([1, 4, 2]), tf.constant(5)
    ids, _, scores = beam_search(decoder, encoded, max_length, beam_size=2, length_penalty=0.0)
    assert ids.numpy()[0].tolist() == [END_ID, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(scores.numpy(), np.log([table[START_ID, END_ID]]), rtol=1e-5)
    greedy_ids, _, greedy_scores = greedy_decode(decoder, encoded, max_length)
    assert greedy_ids.numpy()[0, :2].tolist() == [a, x] and greedy_scores.numpy()[0] < scores.numpy()[0]


def test_beam_search_matches_the_plain_reference_on_the_trained_model(trained):
    run, _, inputs = trained
    model = run.model
    encoded = model.encode({"images": inputs["images"][:3]})
    max_length = model.max_length
    ids, _, scores = beam_search(model.decoder, encoded, tf.constant(max_length), 3, length_penalty=0.7)
    for i, (_, raw, words) in enumerate(_reference_beam_search(model.decoder, encoded, max_length, 3, 0.7)):
        assert ids.numpy()[i, : len(words)].tolist() == words
        np.testing.assert_allclose(scores.numpy()[i], raw, rtol=1e-5)


# -- XLA -----------------------------------------------------------------------


def _compiled_by_xla(model, mode, inputs, *args):
    """Whether the decode function of `mode` calls its loop as an XLA cluster."""
    graph = model._decode_function(mode, True).get_concrete_function(inputs, *args).graph
    return any(op.node_def.attr["_XlaMustCompile"].b for op in graph.get_operations()
               if op.type.endswith("PartitionedCall"))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_xla_compiled_decoding_gives_the_same_captions(trained, beam_size):
    run, _, inputs = trained
    model, length = run.model, tf.constant(run.model.max_length)
    mode_args = (length,) if beam_size == 1 else (length, beam_size, tf.constant(0.7))
    assert _compiled_by_xla(model, "greedy" if beam_size == 1 else "beam", inputs, *mode_args)
    compiled = model.generate(inputs, beam_size=beam_size)
    plain = model.generate(inputs, beam_size=beam_size, jit_compile=False)
    np.testing.assert_array_equal(compiled[0].numpy(), plain[0].numpy())
    np.testing.assert_allclose(compiled[2].numpy(), plain[2].numpy(), rtol=1e-5)
    np.testing.assert_allclose(compiled[1].numpy(), plain[1].numpy(), rtol=1e-5, atol=1e-6)


# -- sampling ------------------------------------------------------------------


def test_sampling_is_reproducible_and_cold_sampling_is_greedy(trained):
    run, _, inputs = trained
    model = run.model
    first = model.generate(inputs, temperature=1.5, seed=7)
    again = model.generate(inputs, temperature=1.5, seed=7)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    np.testing.assert_array_equal(first[2].numpy(), again[2].numpy())
    _check_convention(first[0], first[1], model.max_length)
    others = [model.generate(inputs, temperature=1.5, seed=s)[0].numpy() for s in (8, 9)]
    assert any((o != first[0].numpy()).any() for o in others), "different seeds gave the same captions"
    # The score is the model's own log-probability of the sampled caption.
    forced_scores, _, _ = _teacher_forced(model, inputs, first[0].numpy())
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


# -- attention -----------------------------------------------------------------


def test_attention_rows_sum_to_one_for_each_generated_word(trained):
    # Greedy here; beam search and sampling go through _check_convention in their own tests.
    run, _, inputs = trained
    ids, attention, scores = run.model.generate(inputs)
    locations = run.model.feature_shape[0] * run.model.feature_shape[1]
    assert attention.shape == (len(inputs["images"]), run.model.max_length + 1, locations)
    _check_convention(ids, attention, run.model.max_length)
    assert np.isfinite(scores.numpy()).all()


# -- through caption_files and argument checks ---------------------------------


def test_caption_files_passes_beam_size_and_temperature(trained):
    run, paths, inputs = trained
    paths = paths[:5]
    default = run.caption_files(paths, batch_size=2)
    assert [r["caption"] for r in run.caption_files(paths, batch_size=2, beam_size=1)] == [
        r["caption"] for r in default
    ]
    beam = run.caption_files(paths, batch_size=2, beam_size=3)
    expected_ids, _, expected_scores = run.model.generate({"images": inputs["images"][:5]}, beam_size=3)
    assert [r["caption"] for r in beam] == [run.vocabulary.decode(row) for row in expected_ids.numpy()]
    np.testing.assert_allclose([r["score"] for r in beam], expected_scores.numpy(), rtol=1e-5)
    assert any(b["score"] != d["score"] for b, d in zip(beam, default))  # beam search did run
    # Sampled, each batch seeded with its number: reproducible, and not the greedy captions.
    sampled = run.caption_files(paths, batch_size=2, temperature=1.5)
    expected = []
    for number, start in enumerate(range(0, 5, 2)):
        ids = run.model.generate({"images": inputs["images"][:5][start:start + 2]}, temperature=1.5, seed=number)[0]
        expected += [run.vocabulary.decode(row) for row in ids.numpy()]
    assert [r["caption"] for r in sampled] == expected
    for result in beam + sampled:
        words = len(result["caption"].split())
        assert result["attention"].shape[0] == words + 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 2.5}, "beam_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 1.0, "beam_size": 3}, "not both"),
        ({"beam_size": 3, "length_penalty": -0.5}, "length_penalty"),
        ({"max_length": 0}, "max_length must be at least 1, got 0"),  # not the model's default
    ],
)
def test_bad_decoding_arguments_are_rejected(kwargs, message):
    model = _tiny_captioner()
    with pytest.raises(ValueError, match=message):
        model.generate(_random_images(1), **kwargs)
