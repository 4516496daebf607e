import dataclasses

import numpy as np
import pytest

from kcap.data.feature_cache import FeatureCache
from kcap.data.pipeline import steps_per_epoch
from kcap.training.assembly import fit_arguments, prepare_data, validation_captioning
from kcap.training.validation_captioning import subset


@pytest.fixture(scope="module")
def prepared(tiny_config):
    config = tiny_config.resolved()
    return config, prepare_data(config)


def test_fit_arguments_give_the_epochs_asked_and_the_whole_validation_split(prepared):
    config, data = prepared
    arguments = fit_arguments(config, data, epochs=3, initial_epoch=2)
    steps = steps_per_epoch(data.train_images, config.batch_size)
    assert {k: v for k, v in arguments.items() if k not in ("x", "validation_data")} == {
        "epochs": 3, "initial_epoch": 2, "steps_per_epoch": steps, "shuffle": False,
    }
    assert sum(1 for _ in arguments["x"]) == steps  # epoch 3 only: a resumed run trains no epoch twice
    rows = sum(int(captions.shape[0]) for _, captions in arguments["validation_data"])
    assert rows == sum(len(i.captions) for i in data.val_images)
    assert fit_arguments(config, data)["epochs"] == config.epochs

    without_val = dataclasses.replace(data, dataset=dataclasses.replace(data.dataset, images=data.train_images))
    assert fit_arguments(config, without_val)["validation_data"] is None


def test_validation_captioning_captions_the_images_asked_from_the_cache_when_there_is_one(prepared, tmp_path):
    config, data = prepared
    val = data.val_images
    some = validation_captioning(config, data, count=3)
    assert some.image_paths == [str(val[i].path) for i in subset(val, 3)]
    assert next(iter(some.inputs))["images"].shape[1:] == (config.image_size, config.image_size, 3)

    cache = FeatureCache(tmp_path / "cache", [str(i.path) for i in val], (2, 2, 3))
    cache.directory.mkdir()
    np.save(cache.array_path, np.ones((len(val), 2, 2, 3), np.float16))
    cache.progress_path.write_text(f'{{"done": {len(val)}}}')
    cached = validation_captioning(config, dataclasses.replace(data, feature_cache=cache))
    assert cached.image_paths == [str(i.path) for i in val] and cached.references == [i.captions for i in val]
    assert sum(int(batch["features"].shape[0]) for batch in cached.inputs) == len(val)

