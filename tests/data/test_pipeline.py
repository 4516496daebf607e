import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kcap.data.dataset import CaptionedImage
from kcap.data.images import load_image
from kcap.data.pipeline import evaluation_dataset, image_dataset, steps_per_epoch, training_dataset
from kcap.text import Vocabulary


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    result = []
    for i in range(10):
        path = tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(path)
        captions = ["a dog"] * 2 + ["a big black dog runs on the grass"] * (i % 3)
        result.append(CaptionedImage(path, captions, "train"))
    return result


def test_training_batches_have_the_documented_shapes_and_dtypes(images):
    vocab = Vocabulary.build(c for i in images for c in i.captions)
    ds = training_dataset(images, vocab, (32, 32), batch_size=4, seed=0, epochs=1)
    batches = list(ds)
    assert len(batches) == steps_per_epoch(images, 4)
    inputs, captions = batches[0]
    assert inputs["images"].dtype == tf.uint8 and inputs["images"].shape == (4, 32, 32, 3)
    assert captions.dtype == tf.int32 and captions.shape[0] == 4
    rows = sum(int(c.shape[0]) for _, c in batches)
    assert rows == sum(len(i.captions) for i in images)
    for _, caps in batches:
        # Padding is trimmed to the longest caption of each batch.
        longest = int(tf.reduce_max(tf.math.count_nonzero(caps, axis=1)))
        assert caps.shape[1] == longest
        assert all(int(c[0]) == 1 for c in caps)  # every caption starts with <start>


def test_epoch_order_depends_on_seed_and_epoch_only(images):
    vocab = Vocabulary.build(c for i in images for c in i.captions)

    def order(seed, epochs, initial_epoch=0):
        ds = training_dataset(images, vocab, (16, 16), 4, seed, epochs, initial_epoch)
        return [tf.reduce_sum(tf.cast(x["images"], tf.int64)).numpy() for x, _ in ds]

    full = order(seed=1, epochs=3)
    per_epoch = steps_per_epoch(images, 4)
    assert order(seed=1, epochs=3, initial_epoch=2) == full[2 * per_epoch:]  # a resumed run sees the same batches
    assert full[:per_epoch] != full[per_epoch: 2 * per_epoch]  # epochs are shuffled differently
    assert order(seed=2, epochs=1) != full[:per_epoch]


def test_length_pools_batch_like_lengths_and_keep_every_row_once_an_epoch(images):
    vocab = Vocabulary.build(c for i in images for c in i.captions)
    everything = sorted(tuple(t[t > 0]) for t in (vocab.encode(c, pad=True) for i in images for c in i.captions))
    per_epoch = steps_per_epoch(images, 4)

    def epochs(length_pool):
        ds = training_dataset(images, vocab, (16, 16), 4, seed=3, epochs=2, length_pool=length_pool)
        batches = [captions.numpy() for _, captions in ds]
        return batches[:per_epoch], batches[per_epoch:]

    pooled, random = epochs(20), epochs(1)
    for epoch in (*pooled, *random):
        assert sorted(tuple(t[t > 0]) for batch in epoch for t in batch) == everything
    # 20 short captions and 10 long ones: random batches of 4 mostly hold a long one and
    # take its length; sorted, the short ones make batches of their own.
    width = lambda epoch: sum(batch.shape[1] for batch in epoch)  # noqa: E731
    assert width(pooled[0]) < width(random[0]) and width(pooled[1]) < width(random[1])
    assert [b.shape[1] for b in pooled[0]] != [b.shape[1] for b in pooled[1]]  # batch order is shuffled too


def test_evaluation_dataset_keeps_every_row_in_order(images):
    vocab = Vocabulary.build(c for i in images for c in i.captions)
    caps = np.concatenate([c.numpy()[:, :3] for _, c in evaluation_dataset(images, vocab, (16, 16), 3)])
    expected = [vocab.encode(c, pad=True)[:3] for i in images for c in i.captions]
    np.testing.assert_array_equal(caps, np.stack(expected))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_grayscale_palette_and_alpha_images_become_rgb(tmp_path, mode):
    path = tmp_path / "image.png"
    base = Image.new("RGB", (30, 20), (200, 100, 50))
    (base.convert(mode) if mode != "RGB" else base).save(path)
    image = load_image(str(path), (24, 24))
    assert image.shape == (24, 24, 3) and image.dtype == tf.uint8
    # What the file holds, as Pillow reads it to RGB: grey in all three channels for "L", the
    # palette's nearest colour for "P".
    expected = np.asarray(Image.open(path).convert("RGB"))[10, 15]
    np.testing.assert_allclose(image.numpy()[12, 12], expected, atol=2)
    if mode in ("RGB", "RGBA"):
        np.testing.assert_allclose(image.numpy()[12, 12], [200, 100, 50], atol=2)


def test_image_dataset_batches_unique_images(images):
    batches = list(image_dataset([i.path for i in images], (20, 20), batch_size=4))
    assert [int(b["images"].shape[0]) for b in batches] == [4, 4, 2]
    decoded = np.concatenate([b["images"].numpy() for b in batches])
    np.testing.assert_array_equal(decoded, np.stack([load_image(str(i.path), (20, 20)) for i in images]))


def test_feature_batches_hold_each_rows_own_features_in_the_order_asked(images, tmp_path):
    from kcap.data.feature_cache import FeatureCache
    from kcap.data.pipeline import feature_batcher

    paths = [str(i.path) for i in images]
    cache = FeatureCache(tmp_path / "cache", paths, (2, 2, 3))
    cache.directory.mkdir()
    features = np.arange(len(paths) * 12, dtype=np.float16).reshape(len(paths), 2, 2, 3)
    np.save(cache.array_path, features)
    cache.progress_path.write_text(f'{{"done": {len(paths)}}}')
    rows = [paths[3], paths[1], paths[3], paths[0], paths[7]]  # one row per caption: an image repeats
    tokens = np.arange(len(rows) * 4, dtype=np.int32).reshape(len(rows), 4)
    order = [4, 0, 2, 1, 3]

    batches = list(feature_batcher(cache, rows, 2, tokens)(tf.constant(order, tf.int64)))
    assert [len(captions) for _, captions in batches] == [2, 2, 1]
    read = np.concatenate([inputs["features"] for inputs, _ in batches])
    np.testing.assert_array_equal(read, features[[paths.index(rows[i]) for i in order]])
    np.testing.assert_array_equal(np.concatenate([captions for _, captions in batches]), tokens[order])
    # Without captions (validation captioning): the inputs alone.
    first = next(iter(feature_batcher(cache, rows, 2)(tf.constant(order, tf.int64))))
    assert set(first) == {"features"} and first["features"].dtype == tf.float16
    np.testing.assert_array_equal(first["features"], read[:2])
