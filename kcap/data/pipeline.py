"""The tf.data pipeline: (image, caption) rows → shuffled, batched, prefetched tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from kcap.data.dataset import CaptionedImage
from kcap.data.images import load_image, path_tensor
from kcap.text.vocabulary import Vocabulary

if TYPE_CHECKING:  # kcap.data.feature_cache reads images through this module
    from kcap.data.feature_cache import FeatureCache

AUTOTUNE = tf.data.AUTOTUNE


def caption_rows(images: Sequence[CaptionedImage], vocabulary: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """One row per caption: image paths (str) and padded token ids (int32)."""
    paths, tokens = [], []
    for image in images:
        for caption in image.captions:
            paths.append(str(image.path))
            tokens.append(vocabulary.encode(caption, pad=True))
    if not paths:
        raise ValueError("No captions to build a dataset from.")
    return np.asarray(paths), np.stack(tokens)


def _trim_padding(inputs, tokens):
    """Cuts the batch's captions to its longest one: no step is spent on padding alone."""
    longest = tf.reduce_max(tf.math.count_nonzero(tokens, axis=1, dtype=tf.int32))
    return inputs, tokens[:, :longest]


def steps_per_epoch(images: Sequence[CaptionedImage], batch_size: int) -> int:
    rows = sum(len(image.captions) for image in images)
    return -(-rows // batch_size)


def _batcher(paths: np.ndarray, tokens, image_size, batch_size: int, feature_cache):
    """A function from row order to batches of (inputs, targets), from image files or the cache.

    `tokens`: one row per path, an array or a dict of them (the targets).
    """
    if feature_cache is not None:
        return feature_batcher(feature_cache, paths, batch_size, tokens)
    tokens_t = tf.nest.map_structure(tf.constant, tokens)
    paths_t = path_tensor(paths)

    def load(index):
        return {"images": load_image(paths_t[index], image_size)}, tf.nest.map_structure(lambda t: t[index], tokens_t)

    return lambda order: (
        tf.data.Dataset.from_tensor_slices(order).map(load, num_parallel_calls=AUTOTUNE).batch(batch_size)
    )


def feature_batcher(
    feature_cache: FeatureCache, paths: Sequence[str], batch_size: int, tokens: np.ndarray | dict | None = None
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """A function from an order of `paths` (int64 indices) to batches of their cached features.

    Each batch is `{"features": float16}`, or `({"features": ...}, captions)`
    with `tokens` (one row of token ids per path, or a dict of arrays with
    one row per path: self-critical training's references). Training,
    validation loss and validation captioning all read the cache through this.

    Example:

    ```python
    batches = feature_batcher(cache, paths, batch_size=32)
    for batch in batches(tf.range(len(paths), dtype=tf.int64)):
        batch["features"]  # (32, h, w, channels) float16, in the order of paths
    ```
    """
    rows = tf.constant(feature_cache.rows(paths))
    gather = feature_cache.gather_fn()
    tokens_t = None if tokens is None else tf.nest.map_structure(tf.constant, tokens)

    def load_batch(indices):
        # One read per batch, not per caption: the memory map is read in order.
        inputs = {"features": gather(tf.gather(rows, indices))}
        return inputs if tokens_t is None else (inputs, tf.nest.map_structure(lambda t: tf.gather(t, indices), tokens_t))

    return lambda order: (
        tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(load_batch, num_parallel_calls=AUTOTUNE)
    )


def epoch_order(
    lengths: np.ndarray | tf.Tensor, batch_size: int, seed: int, epoch: int | tf.Tensor, length_pool: int = 1
) -> tf.Tensor:
    """The rows of epoch `epoch`, in batch order, from their caption `lengths`.

    The rows are shuffled by `(seed, epoch)`. With `length_pool > 1` that order
    is then cut into pools of `length_pool` batches, each pool is sorted by
    caption length (ties stay shuffled) and cut into batches, and the whole
    batches are shuffled again (a last, partial batch stays last). A batch is
    trained only up to its longest caption, so batches of like lengths spend
    almost no steps on padding: on Flickr8k's captions a batch of 64 is then
    about 13 tokens long instead of 24. A pool is still a random draw of the
    epoch's rows, but like lengths can mean like images: with a backbone in
    training, whose batch norm uses each batch's statistics, keep 1.

    >>> lengths = np.array([3, 9, 4, 8, 5, 7])
    >>> order = epoch_order(lengths, batch_size=2, seed=0, epoch=0, length_pool=3)
    >>> sorted(lengths[order.numpy()].reshape(3, 2).tolist())
    [[3, 4], [5, 7], [8, 9]]
    """
    lengths = tf.cast(lengths, tf.int64)
    num_rows = tf.shape(lengths, out_type=tf.int64)[0]
    epoch = tf.cast(epoch, tf.int64)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_rows), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
    )
    if length_pool <= 1:
        return order
    pool = tf.range(num_rows) // (length_pool * batch_size)
    by_length = tf.argsort(pool * (tf.reduce_max(lengths) + 1) + tf.gather(lengths, order), stable=True)
    order = tf.gather(order, by_length)
    full = num_rows // batch_size
    # Another seed than the rows': epochs never reach 2**32.
    shuffled = tf.random.experimental.stateless_shuffle(
        tf.range(full), seed=tf.stack([tf.constant(seed, tf.int64), epoch + (1 << 32)])
    )
    batches = tf.reshape(tf.gather(tf.reshape(order[: full * batch_size], (-1, batch_size)), shuffled), (-1,))
    return tf.concat([batches, order[full * batch_size:]], axis=0)


def training_dataset(
    images: Sequence[CaptionedImage],
    vocabulary: Vocabulary,
    image_size: Sequence[int],
    batch_size: int,
    seed: int,
    epochs: int,
    initial_epoch: int = 0,
    feature_cache: FeatureCache | None = None,
    length_pool: int = 1,
) -> tf.data.Dataset:
    """Batches for epochs `initial_epoch .. epochs-1`, each ordered by `epoch_order`.

    The order of epoch `e` depends only on the seed and `e`, so a run resumed
    at epoch `e` sees exactly the batches an uninterrupted run would have.
    `length_pool`: batches per pool sorted by caption length (1: random
    batches). With a `kcap.data.feature_cache.FeatureCache`, inputs are
    `{"features": float16}` read from the cache instead of `{"images": uint8}`.
    """
    paths, tokens = caption_rows(images, vocabulary)
    batches = _batcher(paths, tokens, image_size, batch_size, feature_cache)
    lengths = tf.constant(np.count_nonzero(tokens, axis=1), tf.int64)

    def one_epoch(epoch):
        return batches(epoch_order(lengths, batch_size, seed, epoch, length_pool))

    epochs_ds = tf.data.Dataset.range(initial_epoch, epochs)
    return epochs_ds.flat_map(one_epoch).map(_trim_padding, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def self_critical_dataset(
    images: Sequence[CaptionedImage],
    references: dict[str, np.ndarray],
    image_size: Sequence[int],
    batch_size: int,
    seed: int,
    epochs: int,
    initial_epoch: int = 0,
    feature_cache: FeatureCache | None = None,
) -> tf.data.Dataset:
    """Self-critical training's batches for epochs `initial_epoch .. epochs-1`: one row per image, not per caption.

    Each is `(inputs, references)`: `{"images"}` or `{"features"}` (with a
    feature cache) and the images' rows of `references`, a dict of arrays
    with one row per image (`kcap.model.cider_reward.CiderReward.reference_vectors`).
    Epoch `e` is shuffled by `(seed, e)` alone, as `training_dataset`'s, so a
    resumed run sees the batches an uninterrupted one would.
    """
    paths = np.asarray([str(image.path) for image in images])
    batches = _batcher(paths, references, image_size, batch_size, feature_cache)
    lengths = tf.ones([len(paths)], tf.int64)
    epochs_ds = tf.data.Dataset.range(initial_epoch, epochs)
    return epochs_ds.flat_map(lambda epoch: batches(epoch_order(lengths, batch_size, seed, epoch))).prefetch(AUTOTUNE)


def images_per_epoch_steps(images: Sequence[CaptionedImage], batch_size: int) -> int:
    """Batches in an epoch of `self_critical_dataset`: one row per image."""
    return -(-len(images) // batch_size)


def evaluation_dataset(
    images: Sequence[CaptionedImage],
    vocabulary: Vocabulary,
    image_size: Sequence[int],
    batch_size: int,
    feature_cache: FeatureCache | None = None,
) -> tf.data.Dataset:
    """Every (image, caption) row once, in order: for validation loss."""
    paths, tokens = caption_rows(images, vocabulary)
    order = tf.range(len(paths), dtype=tf.int64)
    return (
        _batcher(paths, tokens, image_size, batch_size, feature_cache)(order)
        .map(_trim_padding, num_parallel_calls=AUTOTUNE)
        .prefetch(AUTOTUNE)
    )


def image_dataset(paths: Sequence[str], image_size: Sequence[int], batch_size: int) -> tf.data.Dataset:
    """Unique images, in order, as `{"images": uint8 batch}`: for captioning."""
    ds = tf.data.Dataset.from_tensor_slices(path_tensor(paths))
    # A fixed pipeline (decode on every core, two batches ahead) instead of the
    # autotuned one: deleting an autotuned iterator after a busy loop blocks for
    # ~2.5 s in TF 2.21 (sometimes), as long as a whole 256-image cache build
    # takes on 2 CPU cores.
    options = tf.data.Options()
    options.autotune.enabled = False
    # Decoding starts when the iterator is made, not at the first `next`: a caller
    # can set up its output files meanwhile.
    options.experimental_warm_start = True
    return (
        ds.map(lambda path: {"images": load_image(path, image_size)}, num_parallel_calls=AUTOTUNE)
        .batch(batch_size)
        .prefetch(2)
        .with_options(options)
    )
