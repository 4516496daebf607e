"""Pixel normalisation inside the model, so it runs where the model runs."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

# The modes of keras.applications.imagenet_utils.preprocess_input, plus ours.
MODES = ("none", "scale", "tf", "torch", "caffe", "dataset")


@keras.saving.register_keras_serializable(package="kcap")
class ImagePreprocessing(keras.layers.Layer):
    """Turns RGB pixels in [0, 255] into what a backbone expects.

    Modes:
    - `"none"`: pixels pass through (backbones that normalise inside).
    - `"scale"`: pixels / 255, in [0, 1].
    - `"tf"`, `"torch"`, `"caffe"`: as `keras.applications.imagenet_utils.preprocess_input`
      (InceptionV3 and MobileNetV2 use `"tf"`, ResNet50 `"caffe"`).
    - `"dataset"`: `(pixels - mean) / std` with per-channel statistics of the training images.

    Example:

    >>> layer = ImagePreprocessing("tf")
    >>> [float(v) for v in layer(keras.ops.array([[[[0.0, 127.5, 255.0]]]]))[0, 0, 0]]
    [-1.0, 0.0, 1.0]
    """

    def __init__(
        self,
        mode: str = "tf",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"Unknown preprocessing mode {mode!r}; expected one of {MODES}.")
        if mode == "dataset" and (mean is None or std is None):
            raise ValueError("Preprocessing mode 'dataset' needs the per-channel mean and std.")
        self.mode = mode
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "none":
            return images
        if self.mode == "scale":
            return images / 255.0
        if self.mode == "dataset":
            return (images - ops.array(self.mean, images.dtype)) / ops.array(self.std, images.dtype)
        return keras.applications.imagenet_utils.preprocess_input(
            images, data_format="channels_last", mode=self.mode
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "mean": self.mean, "std": self.std}
