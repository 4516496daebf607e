import keras
import numpy as np
import pytest

from kcap.inference import load_run
from kcap.model.augmentation import ImageAugmentation
from kcap.model.backbones import build_backbone
from kcap.model.captioner import Captioner
from kcap.text.vocabulary import END_ID, PAD_ID


def _model(vocabulary_size=12, max_length=6, **kwargs):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("small_cnn", weights=None, image_size=64)
    kwargs = {"train_backbone": True, **kwargs}
    return Captioner(
        backbone, vocabulary_size, max_length, (64, 64), embedding_dim=16, units=24,
        preprocessing="scale", **kwargs,
    )


def test_teacher_forcing_logits_and_greedy_shapes():
    model = _model()
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3)).astype("uint8")
    logits = model({"images": images, "tokens": np.ones((3, 5), "int32")})
    assert logits.shape == (3, 5, 12)
    ids, attention, scores = model.generate({"images": images})
    assert ids.shape == (3, 7) and attention.shape == (3, 7, 16) and scores.shape == (3,)
    np.testing.assert_allclose(attention.numpy()[:, 0].sum(-1), 1.0, rtol=1e-5)
    # After <end>, only padding.
    for row in ids.numpy():
        ends = np.flatnonzero(row == END_ID)
        if ends.size:
            assert (row[ends[0] + 1:] == PAD_ID).all()


def test_fit_on_a_tiny_batch_lowers_the_loss():
    model = _model(augmentation=ImageAugmentation(zoom=0.05, brightness=0.1, seed=0))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (8, 64, 64, 3)).astype("uint8")
    captions = np.concatenate([np.ones((8, 1)), rng.integers(4, 12, (8, 4)), np.full((8, 1), END_ID)], 1).astype("int32")
    history = model.fit({"images": images}, captions, epochs=15, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert set(history.history) == {"loss", "masked_accuracy"}


def test_each_augmentation_draws_independently_of_the_others():
    # A horizontal ramp: zooming in steepens it (a wider spread of each row), brightening shifts it.
    ramp = np.broadcast_to(np.linspace(80, 170, 64, dtype="float32")[None, None, :, None], (256, 64, 64, 3))
    augment = ImageAugmentation(zoom=0.5, brightness=0.3, seed=0)
    out = keras.ops.convert_to_numpy(augment(ramp, training=True))
    zoom = out[:, 32, 8:56, 0].std(axis=1)
    shift = out.mean(axis=(1, 2, 3)) - ramp.mean()
    assert zoom.std() > 1 and shift.std() > 10  # both vary
    assert abs(np.corrcoef(zoom, shift)[0, 1]) < 0.3


def test_fine_tune_layers_trains_only_the_top_layers_and_keeps_batch_norm_frozen(tmp_path):
    # The last 3 layers with weights of small_cnn are bn4, conv5 and bn5: only conv5 learns.
    model = _model(train_backbone=False, fine_tune_layers=3)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    backbone = {v.path: v.numpy() for v in model.backbone.weights}
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (8, 64, 64, 3)).astype("uint8")
    captions = np.concatenate([np.ones((8, 1)), rng.integers(4, 12, (8, 4)), np.full((8, 1), END_ID)], 1).astype("int32")
    model.fit({"images": images}, captions, epochs=2, batch_size=8, verbose=0)
    changed = {v.path for v in model.backbone.weights if not np.array_equal(v.numpy(), backbone[v.path])}
    assert changed == {"conv5/kernel"}
    model.save(tmp_path / "tuned.keras")
    reloaded = keras.models.load_model(tmp_path / "tuned.keras")
    assert [v.path for v in reloaded.backbone.trainable_weights] == ["conv5/kernel"]


def test_loss_ignores_padding():
    model = _model()
    model.compile(optimizer="adam")
    images = np.zeros((2, 64, 64, 3), "uint8")
    short = np.array([[1, 5, 2, 0, 0], [1, 6, 7, 2, 0]], "int32")
    padded = np.pad(short, [(0, 0), (0, 4)])
    a = model.evaluate({"images": images}, short, verbose=0, return_dict=True)
    b = model.evaluate({"images": images}, padded, verbose=0, return_dict=True)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.parametrize("label_smoothing, attention_regularizer", [(0.0, 0.0), (0.1, 0.5)])
def test_loss_and_accuracy_are_the_means_over_the_captions_words(label_smoothing, attention_regularizer):
    # Training computes the output layers at the words only; the figures must be
    # those of the full teacher-forced logits, masked: Keras' own label-smoothed
    # cross-entropy, and the attention penalty's mean over the captions with words.
    model = _model()
    model.compile(optimizer="adam", label_smoothing=label_smoothing, attention_regularizer=attention_regularizer)
    images = np.random.default_rng(2).integers(0, 255, (4, 64, 64, 3)).astype("uint8")
    captions = np.array([[1, 5, 2, 0, 0, 0], [1, 6, 7, 8, 9, 2], [1, 2, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], "int32")
    logits, attention = (x.numpy() for x in model.decoder(captions[:, :-1], model.encode({"images": images})))
    targets = captions[:, 1:]
    words = targets != PAD_ID
    cross_entropy = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    expected_loss = float(cross_entropy(np.eye(12)[targets[words]], logits[words]))
    penalty = ((1.0 - (attention * words[..., None]).sum(axis=1)) ** 2).sum(axis=-1)
    expected_loss += attention_regularizer * penalty[:3].mean()  # the last caption has no word
    expected_accuracy = (logits.argmax(-1) == targets)[words].mean()
    got = model.evaluate({"images": images}, captions, batch_size=4, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert got["masked_accuracy"] == pytest.approx(expected_accuracy, abs=1e-6)


def test_saved_model_file_gives_identical_captions(trained_run, tmp_path):
    trained = load_run(trained_run)
    paths = [i["image"] for i in trained.run.load_splits()["splits"]["test"]]
    before = trained.caption_files(paths)
    trained.model.save(tmp_path / "copy.keras")
    reloaded = keras.models.load_model(tmp_path / "copy.keras")
    assert isinstance(reloaded, Captioner)
    assert reloaded.get_config() == trained.model.get_config()
    trained.model = reloaded
    after = trained.caption_files(paths)
    assert [r["caption"] for r in after] == [r["caption"] for r in before]
    np.testing.assert_allclose([r["score"] for r in after], [r["score"] for r in before], rtol=1e-5)
