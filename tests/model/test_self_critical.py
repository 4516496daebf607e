"""Self-critical training (`Captioner.compile(objective="cider")`): one step moves log p with the advantage."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from decoding_helpers import random_captions, tiny_captioner

from kcap.model.cider_reward import CiderReward
from kcap.model.samplers import BeamSampler
from kcap.text.vocabulary import END_ID


def _references(rows, images: int) -> list:
    """Three captions of `rows` (token ids) per image, as the reward reads them: words and `<end>`."""
    return [[list(r[1:list(r).index(END_ID) + 1]) for r in rows[3 * i:3 * i + 3]] for i in range(images)]


def _policy_loss_per_word(model, inputs, vectors):
    """-(reward - baseline) · log p of each word of the samples a first step draws (seed 0), whether
    `sample_max_length` forced the word, and the samples."""
    encoded = model.encode(inputs)
    ids, rewards, baselines = model.self_critical_samples(encoded, vectors, seed=0)
    log_probs, words = model.sample_log_probs(tf.repeat(encoded, model.samples_per_image, axis=0), ids)
    weighted = -(tf.gather(rewards - baselines, words[:, 0]) * log_probs).numpy()
    return weighted, words.numpy()[:, 1] == model.sample_max_length, ids


@pytest.mark.parametrize("decoder, sampler", [("gru_attention", "random"), ("transformer", "random"), ("transformer", "beam")])
def test_a_step_raises_log_p_of_a_sample_that_beats_the_baseline_and_lowers_one_that_does_not(decoder, sampler):
    vocabulary_size, images = 10, 1
    model = tiny_captioner(vocabulary_size, max_length=5, decoder=decoder)
    rows = random_captions(3 * 3, vocabulary_size, max_length=5, seed=2)
    references = _references(rows, 3)
    reward = CiderReward(references, vocabulary_size)
    inputs = {"features": np.random.default_rng(0).normal(size=(images, *model.feature_shape)).astype("float32")}
    # One image (the document frequencies come from three): no other image's samples pull on its words.
    vectors = {k: tf.constant(v) for k, v in reward.reference_vectors(references[:images]).items()}
    encoded = tf.repeat(model.encode(inputs), 4, axis=0)

    # The greedy baseline: the reward of the image's greedy caption, for each of its samples.
    model.compile(optimizer="sgd", objective="cider", reward=reward, samples_per_image=4, baseline="greedy")
    greedy, _, _ = model.decode(model.encode(inputs))
    np.testing.assert_array_equal(model.self_critical_samples(model.encode(inputs), vectors)[2],
                                  tf.repeat(reward(greedy, vectors), 4))

    model.compile(optimizer=keras.optimizers.SGD(0.002), objective="cider", reward=reward, samples_per_image=4,
                  sampler=sampler)

    def caption_log_probs(ids):
        log_probs, words = model.sample_log_probs(encoded, ids)
        return tf.math.unsorted_segment_sum(log_probs, words[:, 0], len(ids)).numpy()

    # The step draws with the optimizer's iteration count (0) as the seed: these samples.
    ids, rewards, baselines = model.self_critical_samples(model.encode(inputs), vectors, seed=0)
    if sampler == "beam":
        candidates, _, scores = BeamSampler(beam_size=4).candidates(model.decoder, model.encode(inputs), 5)
        np.testing.assert_array_equal(ids, tf.reshape(candidates, (4, -1)))
        # A candidate the search did not find is padding, and has no advantage.
        np.testing.assert_array_equal((rewards - baselines).numpy()[~np.isfinite(scores.numpy()[0])], 0)
    advantages = (rewards - baselines).numpy()
    assert np.ptp(advantages) > 0
    found = ids.numpy()[:, 0] != 0
    before = caption_log_probs(ids)
    history = model.fit(tf.data.Dataset.from_tensors((inputs, vectors)), epochs=1, verbose=0).history
    assert set(history) == {"loss", "reward"} and history["reward"][0] == pytest.approx(float(np.mean(rewards[found])))
    change = caption_log_probs(ids) - before
    assert change[np.argmax(advantages)] > 0 > change[np.argmin(advantages)]
    assert np.sum(advantages * change) > 0


def test_an_end_forced_by_sample_max_length_is_no_action_of_the_policy():
    vocabulary_size = 10
    model = tiny_captioner(vocabulary_size, max_length=6, decoder="transformer")
    rows = random_captions(6, vocabulary_size, max_length=6, seed=4)
    references = _references(rows, 2)
    reward = CiderReward(references, vocabulary_size)
    inputs = {"features": np.random.default_rng(1).normal(size=(2, *model.feature_shape)).astype("float32")}
    vectors = {k: tf.constant(v) for k, v in reward.reference_vectors(references).items()}
    model.compile(optimizer=keras.optimizers.SGD(0.0), objective="cider", reward=reward, samples_per_image=3,
                  sample_max_length=2)

    weighted, forced, ids = _policy_loss_per_word(model, inputs, vectors)
    assert ids.shape == (6, 3)
    assert forced.any() and not forced.all()
    history = model.fit(tf.data.Dataset.from_tensors((inputs, vectors)), epochs=1, verbose=0).history
    assert history["loss"][0] == pytest.approx(weighted[~forced].mean(), rel=1e-5)
    assert history["loss"][0] != pytest.approx(weighted.mean(), rel=1e-3)


def test_the_mixed_objective_adds_the_weighted_cross_entropy_of_the_reference_captions():
    vocabulary_size, weight = 10, 0.7
    model = tiny_captioner(vocabulary_size, max_length=6, decoder="gru_attention")
    rows = random_captions(6, vocabulary_size, max_length=6, seed=5)
    references = _references(rows, 2)
    reward = CiderReward(references, vocabulary_size)
    features = np.random.default_rng(2).normal(size=(2, *model.feature_shape)).astype("float32")
    # The second image has two captions: its third row is padding, and no word of the cross-entropy.
    captions = np.stack([rows[0:3], np.concatenate([rows[3:5], np.zeros_like(rows[5:6])])]).astype("int32")
    model.compile(optimizer="sgd")
    cross_entropy = model.evaluate({"features": np.repeat(features, 3, axis=0)}, captions.reshape(6, -1),
                                   batch_size=6, verbose=0, return_dict=True)["loss"]

    vectors = {k: tf.constant(v) for k, v in reward.reference_vectors(references).items()}
    model.compile(optimizer=keras.optimizers.SGD(0.0), objective="cider", reward=reward, samples_per_image=3,
                  cross_entropy_weight=weight)
    weighted, forced, _ = _policy_loss_per_word(model, {"features": features}, vectors)
    policy = weighted[~forced].mean()
    batch = ({"features": features}, {**vectors, "captions": tf.constant(captions)})
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
    assert history["loss"][0] == pytest.approx(policy + weight * cross_entropy, rel=1e-5)

    with pytest.raises(ValueError, match="needs the images' reference captions"):
        model.fit(tf.data.Dataset.from_tensors(({"features": features}, vectors)), epochs=1, verbose=0)
