"""What the sampler and decoding tests share: tiny models, the trained run's test images, and checks.

Conventions under test (see `kcap.model.samplers.base`): ids are
(batch, max_length + 1) with the words, exactly one `<end>`, then 0s. A
caption that does not end within `max_length` words gets `<end>` forced in
the last slot, and its real log-probability counts in the score.
"""

import json

import keras
import numpy as np
import tensorflow as tf

from kcap.export import export_run
from kcap.inference import load_run
from kcap.model.backbones import build_backbone
from kcap.model.captioner import Captioner
from kcap.model.samplers import caption_lengths, length_penalty
from kcap.text.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID


def tiny_captioner(vocabulary_size=12, max_length=6, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    backbone = build_backbone("small_cnn", weights=None, image_size=64)
    return Captioner(
        backbone, vocabulary_size, max_length, (64, 64), embedding_dim=16, units=32,
        preprocessing="scale", train_backbone=True, **kwargs,
    )


def random_images(n, seed=0):
    return {"images": np.random.default_rng(seed).integers(0, 255, (n, 64, 64, 3)).astype("uint8")}


def random_captions(n, vocabulary_size, max_length, seed=0):
    """`n` training rows `<start> words <end> 0...` of 1 to `max_length` random words, int32 (n, max_length + 2)."""
    rng = np.random.default_rng(seed)
    captions = np.zeros((n, max_length + 2), "int32")
    captions[:, 0] = START_ID
    for row in captions:
        length = rng.integers(1, max_length + 1)
        row[1:length + 1] = rng.integers(4, vocabulary_size, length)
        row[length + 1] = END_ID
    return captions


def peaky_captioner(vocabulary_size, max_length=3, end_bias=0.0):
    model = tiny_captioner(vocabulary_size=vocabulary_size, max_length=max_length, seed=3)
    # Sharper word distributions than at initialisation, so captions of
    # different lengths and scores compete.
    kernel, bias = model.decoder.logits.kernel, model.decoder.logits.bias
    kernel.assign(kernel * 8.0)
    bias.assign(tf.tensor_scatter_nd_update(bias, [[END_ID]], [end_bias]))
    return model


def normalised(ids, scores, alpha):
    return np.asarray(scores) / length_penalty(caption_lengths(ids), alpha).numpy()


def teacher_forced(model, inputs, ids):
    """Log-probability of each decoded caption and its attention, by teacher forcing.

    This is an independent re-computation through `decoder.call`, so it
    checks that a sampler's ids, scores and attention belong together.
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


def check_convention(ids, attention, max_length):
    """One <end> per row, only padding after it, attention rows sum to 1 up to <end>."""
    ids, attention = np.asarray(ids), np.asarray(attention)
    assert ids.shape[1] == max_length + 1 and attention.shape[1] == max_length + 1
    for row, weights in zip(ids, attention):
        ends = np.flatnonzero(row == END_ID)
        assert ends.size == 1, row
        assert (row[ends[0] + 1:] == PAD_ID).all(), row
        np.testing.assert_allclose(weights[: ends[0] + 1].sum(-1), 1.0, rtol=1e-5)
        assert (weights[ends[0] + 1:] == 0).all()


class MarkovDecoder:
    """A decoder whose next-word log-probabilities depend only on the last word.

    It has the `prepare`/`start`/`step` of `kcap.model.decoders.Decoder`. Because
    its probabilities are written out in a table, a test can build a case with
    a known best caption (and can run many random cases quickly).
    `table[w]` holds the log-probabilities after word `w` (row `START_ID`
    after `<start>`). The attention is spread evenly over the locations.
    """

    def __init__(self, table):
        with np.errstate(divide="ignore"):  # impossible words: log 0 = -inf
            self.table = tf.constant(np.log(np.asarray(table, "float64")), tf.float32)

    def prepare(self, encoded):
        return encoded

    def start(self, memory, max_length):
        return tf.zeros([tf.shape(memory)[0], 1])

    def step(self, tokens, state, memory):
        locations = tf.shape(memory)[1]
        weights = tf.fill([tf.shape(tokens)[0], locations], 1.0 / tf.cast(locations, tf.float32))
        return tf.gather(self.table, tokens), state, weights


def repeats_ngram(words, word, n):
    """Whether `word` after `words` would repeat one of their `n`-grams (never, for n = 0)."""
    if not n or len(words) < n - 1:
        return False
    gram = (*words[len(words) - n + 1:], word)
    return any(tuple(words[i:i + n]) == gram for i in range(len(words) - n + 1))


def reference_beam_search(decoder, encoded, max_length, beam_size, alpha, no_repeat_ngram=0):
    """The beam search of `BeamSampler`, written out in Python, one image at a time.

    Hypotheses are Python tuples, each with its own decoder state (a nest),
    and the loop always runs to `max_length` with no early stop, so this also
    checks that stopping early changes nothing. Returns
    `(normalised score, raw score, tokens)` per image.
    """
    results = []
    for image in range(encoded.shape[0]):
        memory = decoder.prepare(encoded[image:image + 1])
        start = decoder.start(memory, max_length)
        beams = [(0.0, 0.0, [], False, tf.nest.map_structure(lambda s: s[0], start))]
        best = (-np.inf, None, None)
        for t in range(max_length + 1):
            n = len(beams)
            tokens = np.array([b[2][-1] if b[2] else START_ID for b in beams], "int32")
            states = tf.nest.map_structure(lambda *rows: tf.stack(rows), *[b[4] for b in beams])
            logits, states, _ = decoder.step(
                tokens, states, tf.nest.map_structure(lambda m: tf.repeat(m, n, 0), memory)
            )
            log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32)).numpy()
            candidates = []
            for b, (norm, raw, words, finished, _) in enumerate(beams):
                state = tf.nest.map_structure(lambda s: s[b], states)
                if finished:  # stays, with its score and length
                    candidates.append((norm, raw, words, True, state))
                    continue
                allowed = [
                    w for w in range(log_probs.shape[1])
                    if w not in (PAD_ID, START_ID, UNK_ID) and not repeats_ngram(words, w, no_repeat_ngram)
                ]
                for w in [END_ID] if t == max_length else allowed:
                    new_raw = raw + log_probs[b, w]
                    new_norm = new_raw / float(length_penalty(t + 1, alpha))
                    candidates.append((new_norm, new_raw, words + [w], w == END_ID, state))
            candidates.sort(key=lambda c: -c[0])  # stable: ties keep the lower beam and word
            beams = candidates[:beam_size]
            for norm, raw, words, finished, _ in beams:
                if finished and norm > best[0]:
                    best = (norm, raw, words)
        results.append(best)
    return results


def check_export_serves_caption_files(run_dir, output, decoder: str) -> None:
    """The run's beam-2 export serves, for its test images, the captions and scores of `caption_files`."""
    output = export_run(run_dir, output, beam_size=2)
    trained = load_run(run_dir)
    test = [item["image"] for item in trained.run.load_splits()["splits"]["test"]]
    served = tf.saved_model.load(str(output)).signatures["serving_default"](
        image_bytes=tf.constant([open(p, "rb").read() for p in test])
    )
    expected = trained.caption_files(test, beam_size=2)
    assert [c.decode() for c in served["caption"].numpy()] == [r["caption"] for r in expected]
    np.testing.assert_allclose(served["score"].numpy(), [r["score"] for r in expected], rtol=1e-5, atol=1e-5)
    assert json.loads((output / "assets" / "config.json").read_text())["settings"]["decoder"] == decoder
