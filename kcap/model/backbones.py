"""Backbones by name: which CNN, its input size, its preprocessing, its feature map."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import keras

from kcap.model.model_files import load_keras_file


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What kcap needs to know about a named backbone."""

    name: str
    build: Callable[..., keras.Model]
    image_size: int
    preprocessing: str  # a mode of kcap.model.preprocessing.ImagePreprocessing
    feature_shape: tuple[int, int, int]  # at `image_size`
    pretrained: bool  # whether "imagenet" weights exist


def keras_application(constructor: Callable, **extra) -> Callable[..., keras.Model]:
    """A `BackboneSpec.build` for a `keras.applications` constructor, without its classifier head."""

    def build(weights: str | None, image_size: int) -> keras.Model:
        return constructor(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3), **extra
        )

    return build


def small_cnn(weights: str | None = None, image_size: int = 96) -> keras.Model:
    """A small CNN that learns from scratch in minutes on a CPU.

    Six 3x3 conv + batch-norm + ReLU layers, stride 16 overall, 128 channels
    out: 6x6x128 at 96 px. It is the default for the embedded synthetic set,
    where no pretrained network is needed and InceptionV3 would take hours
    on two CPU cores. It has no pretrained weights.
    """
    if weights not in (None, "none"):
        raise ValueError("The small_cnn backbone has no pretrained weights; use weights=None.")
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = inputs
    for i, (filters, stride) in enumerate(
        [(24, 2), (48, 2), (48, 1), (96, 2), (96, 1), (128, 2)]
    ):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, x, name="small_cnn")


BACKBONES: dict[str, BackboneSpec] = {}  # by name; add to it with `register_backbone`


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Makes a backbone buildable by name (`--backbone NAME`, `build_backbone(NAME)`).

    `spec.build(weights, image_size)` returns a Keras model from RGB pixels to a
    4-D feature map; `spec.preprocessing` is the `ImagePreprocessing` mode its
    pixels need and `spec.feature_shape` its output at `spec.image_size`.

    Example:

    ```python
    register_backbone(BackboneSpec("convnext_tiny", keras_application(keras.applications.ConvNeXtTiny),
                                   224, "none", (7, 7, 768), pretrained=True))
    ```
    """
    if is_backbone_file(spec.name) or not spec.name.isidentifier():
        raise ValueError(f"A backbone needs a name that is an identifier, got {spec.name!r}.")
    if spec.name in BACKBONES:
        raise ValueError(f"The backbone {spec.name!r} is registered already.")
    BACKBONES[spec.name] = spec
    return spec


def is_backbone_file(name: str) -> bool:
    return name.endswith(".keras")


for _spec in [
    BackboneSpec("inception_v3", keras_application(keras.applications.InceptionV3), 299, "tf", (8, 8, 2048), True),
    BackboneSpec("mobilenet_v2", keras_application(keras.applications.MobileNetV2), 224, "tf", (7, 7, 1280), True),
    BackboneSpec(
        "mobilenet_v3_small",
        keras_application(keras.applications.MobileNetV3Small, include_preprocessing=True),
        224, "none", (7, 7, 576), True,
    ),
    BackboneSpec(
        "mobilenet_v3_large",
        keras_application(keras.applications.MobileNetV3Large, include_preprocessing=True),
        224, "none", (7, 7, 960), True,
    ),
    BackboneSpec("efficientnet_b0", keras_application(keras.applications.EfficientNetB0), 224, "none", (7, 7, 1280), True),
    BackboneSpec("resnet50", keras_application(keras.applications.ResNet50), 224, "caffe", (7, 7, 2048), True),
    BackboneSpec("small_cnn", small_cnn, 96, "scale", (6, 6, 128), False),
]:
    register_backbone(_spec)


def get_backbone_spec(name: str, image_size: int | None = None) -> BackboneSpec:
    """The spec of a named backbone, or of a `.keras` feature-extractor file."""
    if is_backbone_file(name):
        if not Path(name).is_file():
            raise FileNotFoundError(f"Backbone file {name} does not exist.")
        size = image_size or 224
        return BackboneSpec(name, _load_backbone_file, size, "none", (0, 0, 0), True)
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)} or give a .keras file."
        ) from None


def _load_backbone_file(weights: str | None, image_size: int, path: str = "") -> keras.Model:
    model = load_keras_file(path, "Save the feature extractor again with `model.save(PATH.keras)`.")
    if type(model).__name__ == "Captioner":  # a kcap run's own model.keras / best.keras
        raise ValueError(
            f"Backbone file {path} is a whole kcap captioner, not a feature extractor; give a CNN that "
            "maps images to a feature map (e.g. a keras.applications model with include_top=False)."
        )
    try:
        shape = model.compute_output_shape((None, image_size, image_size, 3))
    except Exception as error:  # a model Keras cannot infer shapes for
        raise ValueError(
            f"Backbone file {path}: cannot tell its output shape for {image_size}x{image_size} RGB images "
            f"({error}); kcap needs a CNN that maps images to a 4-D feature map."
        ) from None
    if len(shape) != 4:
        raise ValueError(
            f"Backbone file {path}: its output has shape {shape}; kcap needs a 4-D feature map "
            "(batch, height, width, channels) — remove pooling and classifier layers."
        )
    return model


def build_backbone(name: str, weights: str | None = "imagenet", image_size: int | None = None) -> keras.Model:
    """Builds a named backbone without its classifier head, or loads a `.keras` one.

    Args:
        name: one of `BACKBONES`, or the path of a `.keras` model that takes
            raw RGB pixels in [0, 255] (its preprocessing inside) and returns
            a 4-D feature map.
        weights: `"imagenet"`, `None`/`"none"` (random init) or a weights file
            path. A `.keras` backbone brings its own weights (`"file"`).
        image_size: input side in pixels; defaults to the backbone's own.

    Raises a clear error, within seconds, when ImageNet weights cannot be
    downloaded.

    Example:

    >>> backbone = build_backbone("mobilenet_v2", weights=None)
    >>> backbone.output_shape
    (None, 7, 7, 1280)
    """
    spec = get_backbone_spec(name, image_size)
    size = image_size or spec.image_size
    if is_backbone_file(name):
        model = _load_backbone_file(None, size, path=name)
        if weights not in (None, "none", "file", "imagenet"):
            _load_weights_file(model, weights, name)
        return model
    weights = None if weights in (None, "none") else weights
    if weights == "imagenet" and not spec.pretrained:
        raise ValueError(f"Backbone {name!r} has no ImageNet weights; use --backbone-weights none.")
    path_weights = weights if weights not in (None, "imagenet") else None
    try:
        model = spec.build(weights=None if path_weights else weights, image_size=size)
    except Exception as error:  # noqa: BLE001 - keras raises many kinds for a failed download
        if weights == "imagenet" and _looks_like_download_error(error):
            raise RuntimeError(
                f"Could not download the ImageNet weights of {name!r} ({type(error).__name__}: {error}). "
                "Without network access, use --backbone-weights none (train from scratch), "
                "--backbone-weights PATH (a weights file you have), or --backbone PATH.keras "
                "(a whole feature-extractor model)."
            ) from error
        raise
    if path_weights:
        _load_weights_file(model, path_weights, name)
    return model


def check_weights_file(path: str) -> None:
    """Fails, naming `path`, when a `--backbone-weights` file is not there."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"Backbone weights file {path} does not exist; --backbone-weights takes imagenet, none "
            "or the path of a weights file (.weights.h5 or .h5)."
        )


def _load_weights_file(model: keras.Model, path: str, name: str) -> None:
    check_weights_file(path)
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 - h5py and keras raise many kinds for a wrong file
        # Keras' own message runs to kilobytes of tensor values; its first line says what failed.
        first_line = str(error).strip().splitlines()[0][:300].rstrip(":") if str(error).strip() else ""
        raise ValueError(
            f"Cannot load {path} into the {Path(name).name} backbone ({type(error).__name__}: {first_line}). "
            "The file must hold the weights of this very architecture."
        ) from error


def _looks_like_download_error(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(word in text for word in ("url", "download", "connection", "resolve", "http", "fetch", "network"))
