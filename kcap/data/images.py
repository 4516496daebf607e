"""Reading and decoding image files in TensorFlow."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from kcap.data.formats.common import IMAGE_SUFFIXES

# Part of the feature cache's key: change it whenever decoding or resizing changes.
DECODING = "decode_image(channels=3) + bilinear resize, no antialiasing, rounded to uint8"


def decode_image(data: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, GIF, BMP, WebP) → uint8 (height, width, 3) at `image_size`.

    Grayscale becomes RGB and an alpha channel is dropped.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    # Bilinear without antialiasing, as keras.utils.image_dataset_from_directory does:
    # antialiasing costs as much CPU as the JPEG decode itself, which on a
    # CPU-only machine is time taken from the backbone.
    image = tf.image.resize(image, image_size, method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def load_image(path: tf.Tensor | str | Path, image_size: Sequence[int]) -> tf.Tensor:
    """Reads an image file and decodes it as in `decode_image`."""
    if isinstance(path, str | Path):
        path = os.fsencode(path)
    return decode_image(tf.io.read_file(path), image_size)


def path_tensor(paths: Sequence[str | Path]) -> tf.Tensor:
    """File paths as a string tensor of their bytes on disk.

    A Linux file name may be any bytes; Python holds those that are not UTF-8 as
    surrogates, which TensorFlow refuses to convert. `os.fsencode` gives the bytes back.
    """
    return tf.constant([os.fsencode(p) for p in paths], tf.string)


def expand_image_paths(paths: Sequence[str]) -> list[str]:
    """Paths of image files, with each folder in `paths` replaced by the images in it.

    A folder gives its files whose names end in an image suffix (any case), sorted by
    name, not its subfolders; files named directly are kept whatever their name.

    Example: `expand_image_paths(["photos", "extra.jpg"])` → `["photos/a.jpg", "photos/b.png", "extra.jpg"]`.
    """
    expanded = []
    for path in paths:
        folder = Path(path)
        if not folder.is_dir():
            expanded.append(str(path))
            continue
        images = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"The folder {folder} has no image files ({', '.join(IMAGE_SUFFIXES)}).")
        expanded.extend(images)
    return expanded
