import dataclasses
import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from conftest import TINY
from kcap.cli import main
from kcap.data.feature_cache import FeatureCache
from kcap.model.captioner import Captioner
from kcap.training.config import TrainConfig
from kcap.training.assembly import build_feature_cache, prepare_data
from kcap.training.trainer import build_captioner, train


@pytest.fixture()
def cached_config(tmp_path, monkeypatch):
    # Its own synthetic set: one test edits an image file.
    monkeypatch.setenv("KCAP_CACHE_DIR", str(tmp_path / "cache"))
    # A frozen randomly initialised small_cnn: cheap, and its features are as cacheable as any.
    return TrainConfig(
        data="synthetic", **{**TINY, "epochs": 1}, train_backbone=False, cache_features=True,
        cache_dir=str(tmp_path / "features"),
    )


def test_second_run_reuses_the_cache_without_a_backbone_forward_pass(cached_config, tmp_path, monkeypatch):
    train(cached_config, tmp_path / "first", verbose=0)
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    cache_info = config["feature_cache"]
    assert not cache_info["reused"] and cache_info["computed"] == 80
    array = cache_info["path"] + "/features.npy"
    mtime = os.stat(array).st_mtime_ns

    calls = []
    original = Captioner._backbone_inputs  # on the way to the backbone, in every extraction

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Captioner, "_backbone_inputs", counting)
    train(cached_config, tmp_path / "second", verbose=0)
    second = json.loads((tmp_path / "second" / "config.json").read_text())["feature_cache"]
    assert second["reused"] and second["path"] == cache_info["path"]
    assert calls == []  # the backbone never ran, not even traced
    assert os.stat(array).st_mtime_ns == mtime
    history = json.loads((tmp_path / "second" / "history.json").read_text())["epochs"]
    assert len(history) == 1 and np.isfinite(history[0]["loss"])


def _cache_for(config):
    config = config.resolved()
    data = prepare_data(config)
    model = build_captioner(config, data.vocabulary, data.normalization)
    paths = [str(i.path) for i in data.dataset.images]
    return FeatureCache.for_model(model, paths, config.cache_dir), model, paths


def test_cache_holds_the_backbone_features_as_float16(cached_config):
    cache, model, paths = _cache_for(cached_config)
    cache.build(model, batch_size=16, progress=False)
    array = cache.open()
    assert array.dtype == np.float16 and array.shape == (80, *model.feature_shape)
    from kcap.data.images import load_image

    image = load_image(paths[5], model.image_size)[None]
    expected = np.asarray(model.extract_features(image))[0]
    np.testing.assert_allclose(array[5].astype("float32"), expected, rtol=2e-2, atol=2e-2)
    # One float16 copy per image and nothing else worth counting.
    assert cache.size_bytes <= 1.05 * array.size * 2
    # A cache made with the constructor, as its arguments say, builds the same features.
    other = FeatureCache(cache.directory.parent / "by-hand", paths[:3], model.feature_shape)
    other.build(model, batch_size=16, progress=False)
    np.testing.assert_array_equal(other.open(), array[:3])
    assert json.loads(other.meta_path.read_text())["images"] == json.loads(cache.meta_path.read_text())["images"][:3]


def test_a_cache_being_built_by_another_process_is_not_built_twice(cached_config, tmp_path):
    import dataclasses

    from kcap.utils.files import exclusive_use

    cache, model, _ = _cache_for(dataclasses.replace(cached_config, cache_dir=str(tmp_path / "features")))
    cache.directory.mkdir(parents=True)
    with exclusive_use(cache.directory):  # what a kcap features in another terminal holds
        with pytest.raises(RuntimeError, match=rf"{cache.directory} is in use by another kcap process building"):
            cache.build(model, batch_size=16, progress=False)
    assert cache.num_done == 0
    assert cache.build(model, batch_size=16, progress=False)["computed"] == 80


def test_changing_the_backbone_or_an_image_invalidates_the_cache(cached_config):
    cache, model, paths = _cache_for(cached_config)
    other_seed, _, _ = _cache_for(dataclasses.replace(cached_config, seed=1))  # other random weights
    assert other_seed.directory != cache.directory
    other_size, _, _ = _cache_for(dataclasses.replace(cached_config, image_size=48))
    assert other_size.directory != cache.directory

    time.sleep(0.01)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(paths[0])
    edited, _, _ = _cache_for(cached_config)
    assert edited.directory != cache.directory


def test_mixed_precision_training_reuses_the_float32_cache(cached_config):
    cache, model, paths = _cache_for(cached_config)
    cache.build(model, batch_size=16, progress=False)
    bf16_cache, bf16_model, _ = _cache_for(dataclasses.replace(cached_config, mixed_precision="mixed_bfloat16"))
    assert bf16_model.decoder.compute_dtype == "bfloat16"  # the policy did apply to the model
    assert bf16_cache.directory == cache.directory and bf16_cache.is_complete()
    # Its own extraction is the float32 one the cache holds, not a bfloat16 copy.
    from kcap.data.images import load_image

    images = np.stack([load_image(p, model.image_size).numpy() for p in paths[:4]])
    np.testing.assert_array_equal(bf16_model.feature_extractor()(images).numpy(), cache.open()[:4])


def test_the_cache_extractor_compiles_the_backbone_weights_it_has_now(cached_config):
    import tensorflow as tf

    from kcap.data.images import load_image

    _, model, paths = _cache_for(cached_config)
    images = np.stack([load_image(p, model.image_size).numpy() for p in paths[:4]])
    extract = model.feature_extractor()
    # Constants in the graph, which the optimizer can fold and fuse: no variable is read.
    graph = extract.get_concrete_function(tf.TensorSpec((None, *model.image_size, 3), tf.uint8))
    assert graph.variables == () and graph.captured_inputs == []
    before = extract(images).numpy()
    np.testing.assert_allclose(before.astype("float32"), model.extract_features(images), rtol=2e-3, atol=2e-3)
    assert model.feature_extractor() is extract  # the same weights: compiled once

    model.backbone.set_weights([w * 2 for w in model.backbone.get_weights()])
    after = model.feature_extractor()(images).numpy()
    assert not np.allclose(after, before, rtol=0.1, atol=0.1)
    np.testing.assert_allclose(after.astype("float32"), model.extract_features(images), rtol=2e-3, atol=2e-3)


def test_caching_the_features_of_a_random_backbone_is_said_plainly(cached_config, caplog):
    # small_cnn has no pretrained weights: frozen for the cache, it stays random.
    config = cached_config.resolved()
    data = prepare_data(config)
    with caplog.at_level("WARNING"):
        build_feature_cache(config, build_captioner(config, data.vocabulary, data.normalization), data.dataset, progress=False)
    assert "The small_cnn backbone starts from random weights (--backbone-weights none) and stays so" in caplog.text


def test_an_interrupted_build_finishes_only_the_missing_images(cached_config):
    cache, model, paths = _cache_for(cached_config)
    stats = cache.build(model, batch_size=16, progress=False)
    assert stats["computed"] == 80
    full = np.array(cache.open())
    # A build killed after 32 images left this progress behind (and garbage after it).
    with open(cache.progress_path, "w") as f:
        json.dump({"done": 32}, f)
    array = np.load(cache.array_path, mmap_mode="r+")
    array[32:] = 0
    array.flush()
    del array
    stats = cache.build(model, batch_size=16, progress=False)
    assert stats["computed"] == 48
    np.testing.assert_array_equal(np.array(cache.open()), full)


def test_a_damaged_cache_is_named_and_computed_again(cached_config, caplog):
    cache, model, paths = _cache_for(cached_config)
    cache.build(model, batch_size=16, progress=False)
    full = np.array(cache.open())
    size = cache.array_path.stat().st_size
    for damage, reason in [
        (lambda: os.truncate(cache.array_path, 1000), r"features.npy cannot be read \(mmap length"),
        (lambda: cache.progress_path.write_text('{"do'), r"progress.json cannot be read \(JSONDecodeError"),
        (lambda: cache.progress_path.write_text('{"done": 81}'), r"progress.json records 81 images done, of 80"),
    ]:
        damage()
        # Reading it names the file and says what to do, rather than numpy's or json's bare words.
        with pytest.raises(RuntimeError, match=rf"{cache.directory} is damaged: .*{reason}.*kcap features"):
            cache.open()
        caplog.clear()
        with caplog.at_level("WARNING", logger="kcap"):
            assert cache.build(model, batch_size=16, progress=False)["computed"] == 80
        assert re.search(rf"{cache.directory} is damaged: .*{reason}.*Computing it again", caplog.text)
        np.testing.assert_array_equal(np.array(cache.open()), full)
        assert cache.array_path.stat().st_size == size


def test_a_build_started_again_never_trusts_an_earlier_arrays_count(cached_config):
    cache, model, _ = _cache_for(cached_config)
    cache.build(model, batch_size=16, progress=False)
    full = np.array(cache.open())
    cache.array_path.unlink()
    # Killed before it recorded any progress of the new array (the first record comes after 5 s).
    batches = []
    original = model.feature_extractor

    def stop_after_one_batch():
        extract = original()

        def counted(images):
            if batches:
                raise KeyboardInterrupt
            batches.append(1)
            return extract(images)
        return counted

    model.feature_extractor = stop_after_one_batch
    with pytest.raises(KeyboardInterrupt):
        cache.build(model, batch_size=16, progress=False)
    model.feature_extractor = original
    assert cache.num_done == 0  # not the 80 the removed array had
    assert cache.build(model, batch_size=16, progress=False)["computed"] == 80
    np.testing.assert_array_equal(np.array(cache.open()), full)


def test_augmentation_with_cached_features_is_a_clear_error(cached_config):
    with pytest.raises(ValueError, match="needs pixels"):
        dataclasses.replace(cached_config, zoom=0.1).resolved()
    with pytest.raises(ValueError, match="frozen backbone"):
        dataclasses.replace(cached_config, train_backbone=True).resolved()


def test_features_with_hparams_builds_the_cache_that_train_with_them_reuses(tmp_path, capsys):
    # A search's best_hyperparameters.json can change what the backbone sees (here its input size).
    hparams = tmp_path / "best_hyperparameters.json"
    hparams.write_text(json.dumps({"image_size": 48}))
    flags = ["--data", "synthetic", "--synthetic-images", str(TINY["synthetic_images"]),
             "--synthetic-image-size", str(TINY["synthetic_image_size"]), "--batch-size", str(TINY["batch_size"]),
             "--cache-dir", str(tmp_path / "features"), "--hparams", str(hparams)]
    assert main(["features", *flags]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["computed"] == TINY["synthetic_images"]
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--cache-features",
                 "--embedding-dim", "16", "--units", "32", "--verbose", "0", *flags]) == 0
    used = json.loads((tmp_path / "run" / "config.json").read_text())
    assert used["settings"]["image_size"] == 48
    assert used["feature_cache"]["reused"] and used["feature_cache"]["path"] == built["cache"]
