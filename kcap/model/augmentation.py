"""Image augmentation inside the model: active in training only."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="kcap")
class ImageAugmentation(keras.layers.Layer):
    """Random flip, zoom-in crop, shift and brightness, built from Keras' own layers.

    Args:
        horizontal_flip: mirror left-right half of the time. Leave off when
            captions say "left" or "right".
        zoom: crop in by up to this fraction of each side (then resize back).
        translate: shift by up to this fraction of each side.
        brightness: change brightness by up to this fraction of the range.
        seed: seed for the random draws.

    At inference (`training=False`) images pass through untouched.

    Example:

    >>> augment = ImageAugmentation(zoom=0.1, brightness=0.2, seed=1)
    >>> tuple(augment(keras.ops.ones((2, 64, 64, 3)) * 100, training=False).shape)
    (2, 64, 64, 3)
    """

    def __init__(
        self,
        horizontal_flip: bool = False,
        zoom: float = 0.0,
        translate: float = 0.0,
        brightness: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("zoom", zoom), ("translate", translate), ("brightness", brightness)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Augmentation {name} must be in [0, 1), got {value}.")
        self.horizontal_flip = bool(horizontal_flip)
        self.zoom = float(zoom)
        self.translate = float(translate)
        self.brightness = float(brightness)
        self.seed = seed

        def step_seed(offset: int) -> int | None:
            # One seed for all steps would make their draws equal: the strongest zoom always the darkest.
            return None if seed is None else seed + offset

        self.steps = []
        if self.horizontal_flip:
            self.steps.append(keras.layers.RandomFlip("horizontal", seed=step_seed(0), name="flip"))
        if self.zoom:
            self.steps.append(
                keras.layers.RandomZoom((-self.zoom, 0.0), seed=step_seed(1), fill_mode="reflect", name="zoom")
            )
        if self.translate:
            self.steps.append(
                keras.layers.RandomTranslation(
                    self.translate, self.translate, seed=step_seed(2), fill_mode="reflect", name="translate"
                )
            )
        if self.brightness:
            self.steps.append(
                keras.layers.RandomBrightness(
                    self.brightness, value_range=(0, 255), seed=step_seed(3), name="brightness"
                )
            )

    def build(self, input_shape):
        for step in self.steps:
            step.build(input_shape)
        self.built = True

    def call(self, images, training=False):
        if not training:
            return images
        for step in self.steps:
            images = step(images, training=True)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "horizontal_flip": self.horizontal_flip,
            "zoom": self.zoom,
            "translate": self.translate,
            "brightness": self.brightness,
            "seed": self.seed,
        }
