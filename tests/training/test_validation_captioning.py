import io

import keras
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY
from kcap.data.loading import load_checked_dataset
from kcap.data.pipeline import image_dataset, steps_per_epoch, training_dataset
from kcap.evaluation.metrics import caption_metrics
from kcap.text.vocabulary import Vocabulary
from kcap.training.config import TrainConfig
from kcap.training.trainer import build_captioner
from kcap.training.validation_captioning import ValidationCaptioning, caption_words, subset


@pytest.fixture(scope="module")
def tiny():
    config = TrainConfig(data="synthetic", **TINY).resolved()
    dataset, _ = load_checked_dataset(config.data_settings(), progress=False)
    train, val = dataset.subset("train"), dataset.subset("val")
    vocabulary = Vocabulary.build((c for image in train for c in image.captions), max_words=config.vocab_size)
    image_size = (config.image_size, config.image_size)
    return config, train, val, vocabulary, image_size


def read_events(directory):
    events = EventAccumulator(str(directory), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    return events


# EarlyStopping warns on epoch 1, which every=2 leaves unscored (documented behaviour).
@pytest.mark.filterwarnings("ignore:Early stopping conditioned on metric `val_cider`")
def test_fit_logs_val_bleu4_and_writes_captions_and_attention_to_tensorboard(tiny, tmp_path):
    config, train, val, vocabulary, image_size = tiny
    model = build_captioner(config, vocabulary)
    paths = [str(i.path) for i in val]
    references = [i.captions for i in val]
    captioning = ValidationCaptioning.from_files(
        paths, references, vocabulary, image_size, batch_size=5,  # batches of 5, 3: order must hold
        log_dir=tmp_path / "logs" / "captions", every=2, num_examples=2,
    )
    seen_by_later_callbacks = []
    history = model.fit(
        training_dataset(train, vocabulary, image_size, config.batch_size, config.seed, 3),
        epochs=3,
        steps_per_epoch=steps_per_epoch(train, config.batch_size),
        callbacks=[
            captioning,  # first: the callbacks after it read its keys
            keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen_by_later_callbacks.append(dict(logs))),
            keras.callbacks.EarlyStopping("val_cider", mode="max", patience=10),
            keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs")),
        ],
        verbose=0,
    )

    # every=2 scores epoch 2, and the last epoch (3) is always scored.
    assert ["val_bleu4" in logs for logs in seen_by_later_callbacks] == [False, True, True]
    assert len(history.history["val_bleu4"]) == len(history.history["val_cider"]) == 2
    assert history.history["val_bleu4"] == [logs["val_bleu4"] for logs in seen_by_later_callbacks[1:]]
    assert all(0.0 <= v <= 1.0 for v in history.history["val_bleu4"])
    assert all(v >= 0.0 for v in history.history["val_cider"])
    assert captioning.last_scores["epoch"] == 3
    assert captioning.last_scores["bleu4"] == history.history["val_bleu4"][-1]

    # The scores are those of the model's own captions of these images.
    ids, _ = captioning.caption()
    hypotheses = [vocabulary.decode(row) for row in ids]
    assert caption_metrics(hypotheses, references, meteor=False)["cider"] == pytest.approx(
        history.history["val_cider"][-1], abs=1e-9)

    events = read_events(tmp_path / "logs" / "captions")
    tags = set(events.Tags()["tensors"])
    assert {"captions/00", "captions/01", "attention/00", "attention/01"} <= tags
    assert "captions/02" not in tags  # num_examples=2
    assert events.SummaryMetadata("captions/00").plugin_data.plugin_name == "text"
    assert events.SummaryMetadata("attention/00").plugin_data.plugin_name == "images"
    assert [e.step for e in events.Tensors("captions/00")] == [1, 2]  # epoch indices, as Keras logs them

    text = events.Tensors("captions/01")[-1].tensor_proto.string_val[0].decode()
    assert val[1].path.name in text and references[1][0] in text
    generated = " ".join(caption_words(ids[1], vocabulary)) or "*(empty caption)*"
    assert f"**generated:** {generated}" in text

    width, height, png = events.Tensors("attention/00")[-1].tensor_proto.string_val[:3]
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.size == (int(width), int(height))
    assert np.asarray(picture).std() > 10

    # Keras' TensorBoard saw the new keys (its validation run) and logs the learning rate itself.
    validation = read_events(tmp_path / "logs" / "validation")
    assert {"epoch_bleu4", "epoch_cider"} <= set(validation.Tags()["tensors"])
    assert "epoch_learning_rate" in read_events(tmp_path / "logs" / "train").Tags()["tensors"]


def test_cached_features_and_images_give_the_same_captions(tiny):
    config, train, val, vocabulary, image_size = tiny
    model = build_captioner(config, vocabulary)
    paths = [str(i.path) for i in val]
    references = [i.captions for i in val]
    images = image_dataset(paths, image_size, 3)
    # What a feature cache feeds the model: the backbone's feature maps, no pixels.
    features = [{"features": model.extract_features(batch["images"]).numpy()} for batch in images]

    from_images = ValidationCaptioning(paths, references, images, vocabulary)
    from_features = ValidationCaptioning(paths, references, lambda: iter(features), vocabulary)
    from_pairs = ValidationCaptioning(paths, references, images.map(lambda x: (x, 0)), vocabulary)
    for callback in (from_images, from_features, from_pairs):
        callback.set_model(model)
        callback.set_params({"epochs": 1})
    ids = np.stack(from_images.caption()[0])
    np.testing.assert_array_equal(np.stack(from_features.caption()[0]), ids)
    np.testing.assert_array_equal(np.stack(from_pairs.caption()[0]), ids)

    logs = {}
    from_features.on_epoch_end(0, logs)  # the last epoch: scored, no TensorBoard directory given
    assert set(logs) == {"val_bleu4", "val_cider"}


def test_a_feature_cache_feeds_the_callback(tiny, tmp_path):
    from kcap.data.feature_cache import FeatureCache

    config, train, val, vocabulary, image_size = tiny
    model = build_captioner(config, vocabulary)
    paths = [str(i.path) for i in val]
    cache = FeatureCache.for_model(model, paths, tmp_path / "cache")
    cache.build(model, batch_size=4, progress=False)
    callback = ValidationCaptioning.from_files(
        paths, [i.captions for i in val], vocabulary, None, batch_size=3, feature_cache=cache,
        log_dir=tmp_path / "captions", num_examples=1,
    )
    callback.set_model(model)
    callback.set_params({"epochs": 1})
    batch = next(iter(callback.inputs))
    assert set(batch) == {"features"} and tuple(batch["features"].shape[1:]) == model.feature_shape
    # Each image's own features, in order: the captions of the features the backbone gives now.
    extract = model.feature_extractor()
    direct = ValidationCaptioning(
        paths, [i.captions for i in val],
        lambda: iter([{"features": extract(b["images"])} for b in image_dataset(paths, image_size, 3)]), vocabulary,
    )
    direct.set_model(model)
    np.testing.assert_array_equal(np.stack(callback.caption()[0]), np.stack(direct.caption()[0]))
    logs = {}
    callback.on_epoch_end(0, logs)
    assert 0.0 <= logs["val_bleu4"] <= 1.0 and logs["val_cider"] >= 0.0
    # The attention picture is drawn on the image file, as the cache holds no pixels.
    assert "attention/00" in read_events(tmp_path / "captions").Tags()["tensors"]


def test_the_pictures_behind_the_attention_are_decoded_as_the_model_decodes_them(tiny, tmp_path):
    # A 16-bit greyscale PNG at mid-grey: PIL's convert("RGB") would clip it to white.
    _, _, _, vocabulary, image_size = tiny
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 60), 32896, dtype=np.uint16)).save(path)
    captioning = ValidationCaptioning.from_files([str(path)], [["a grey square"]], vocabulary, image_size,
                                                 log_dir=tmp_path / "logs", num_examples=1)
    [pixels] = captioning._example_pixels()
    assert pixels.shape == (40, 60, 3) and np.all(pixels == 128)


def test_misaligned_or_bad_inputs_are_refused_with_the_reason(tiny):
    config, train, val, vocabulary, image_size = tiny
    model = build_captioner(config, vocabulary)
    paths = [str(i.path) for i in val]
    references = [i.captions for i in val]

    too_few = ValidationCaptioning(paths, references, image_dataset(paths[:-1], image_size, 4), vocabulary)
    too_few.set_model(model)
    with pytest.raises(ValueError, match=f"yielded {len(paths) - 1} images but there are {len(paths)}"):
        too_few.caption()
    not_dicts = ValidationCaptioning(paths, references, [np.zeros((1, 64, 64, 3))], vocabulary)
    not_dicts.set_model(model)
    with pytest.raises(TypeError, match="must yield dicts of model inputs, got ndarray"):
        not_dicts.caption()
    with pytest.raises(ValueError, match="2 validation images but 1 reference lists"):
        ValidationCaptioning(paths[:2], references[:1], [], vocabulary)
    with pytest.raises(ValueError, match="every must be at least 1"):
        ValidationCaptioning(paths, references, [], vocabulary, every=0)


def test_subset_spreads_the_picks_and_caption_words_align_with_steps():
    assert subset(list(range(10)), 3) == [0, 3, 6]
    assert subset(list(range(4)), 10) == [0, 1, 2, 3]
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "red", "circle"], max_length=5)
    # A step that emitted <pad> keeps its place, so word i goes with attention row i.
    assert caption_words(np.array([4, 0, 5, 2, 0]), vocab) == ["red", "<pad>", "circle"]
    assert vocab.decode(np.array([4, 0, 5, 2, 0])) == "red circle"
