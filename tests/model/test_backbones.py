import numpy as np
import pytest

from conftest import SHARED
from kcap.model.backbones import BACKBONES, build_backbone, get_backbone_spec


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_named_backbone_builds_without_weights_and_gives_its_documented_feature_map(name):
    spec = get_backbone_spec(name)
    backbone = build_backbone(name, weights=None)
    image = np.random.default_rng(0).uniform(0, 255, (1, spec.image_size, spec.image_size, 3)).astype("float32")
    features = backbone(image, training=False)
    assert tuple(features.shape) == (1, *spec.feature_shape)


def test_imagenet_download_failure_is_reported_with_alternatives():
    try:
        build_backbone("mobilenet_v3_small", weights="imagenet")
    except RuntimeError as error:
        assert "--backbone-weights none" in str(error) and "--backbone PATH.keras" in str(error)
    else:
        pytest.skip("ImageNet weights downloaded: this machine has network access")


def test_small_cnn_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("small_cnn", weights="imagenet")


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="inception_v3"):
        get_backbone_spec("vgg99")


def test_keras_file_backbone_must_output_a_feature_map(tmp_path):
    import keras

    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    path = tmp_path / "pooled.keras"
    keras.Model(inputs, pooled).save(path)
    with pytest.raises(ValueError, match="4-D feature map"):
        build_backbone(str(path), weights="file", image_size=64)


def test_a_runs_captioner_given_as_backbone_is_called_that(trained_run):
    with pytest.raises(ValueError, match=r"model.keras is a whole kcap captioner, not a feature extractor"):
        build_backbone(str(trained_run / "model.keras"), weights="file", image_size=64)


def test_shared_pretrained_backbone_file_loads():
    path = SHARED / "weights" / "mobilenet_v2_imagenet_features.keras"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared offline backbone)")
    backbone = build_backbone(str(path), weights="file", image_size=224)
    assert tuple(backbone(np.zeros((1, 224, 224, 3), "float32")).shape) == (1, 7, 7, 1280)


def test_a_missing_or_wrong_weights_file_is_named(tmp_path):
    from kcap.training.config import TrainConfig

    missing = tmp_path / "missing.weights.h5"
    with pytest.raises(FileNotFoundError, match=r"Backbone weights file .*missing.weights.h5 does not exist"):
        TrainConfig(data="synthetic", backbone="small_cnn", backbone_weights=str(missing)).resolved()
    with pytest.raises(FileNotFoundError, match=r"missing.weights.h5 does not exist"):
        build_backbone("small_cnn", weights=str(missing), image_size=32)
    # The weights of another architecture: the error names the file and the backbone.
    other = tmp_path / "mobilenet.weights.h5"
    build_backbone("mobilenet_v2", weights=None, image_size=32).save_weights(other)
    with pytest.raises(ValueError, match=r"Cannot load .*mobilenet.weights.h5 into the small_cnn backbone"):
        build_backbone("small_cnn", weights=str(other), image_size=32)


def test_a_truncated_keras_backbone_file_is_called_that(tmp_path):
    import keras

    inputs = keras.Input((None, None, 3))
    path = tmp_path / "features.keras"
    keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"features.keras is not a complete .keras file \(truncated or damaged"):
        build_backbone(str(path), weights="file", image_size=32)
