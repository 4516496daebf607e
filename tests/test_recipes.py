"""The recipes of docs/architecture.md, followed to the letter: each adds a part and trains with it."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY
from kcap.data import caption_files
from kcap.data.caption_files import CaptionFormat, register_format
from kcap.data.dataset import CaptionDataset, CaptionedImage
from kcap.data.formats.common import CaptionFileError, find_images_dir, read_text, record, resolve_image, text_lines
from kcap.data.images import load_image
from kcap.data.synthetic import write_synthetic_dataset
from kcap.export.savedmodel import build_export_archive
from kcap.inference import load_run
from kcap.model.backbones import BACKBONES, BackboneSpec, register_backbone
from kcap.model.samplers import GreedySampler, Sampler
from kcap.model.samplers.base import word_by_word
from kcap.text.vocabulary import END_ID
from kcap.training.config import TrainConfig
from kcap.training.trainer import train

pytestmark = pytest.mark.slow

SMALL = {key: value for key, value in TINY.items() if not key.startswith("synthetic")} | {"epochs": 1, "val_captions": 4}


# -- Recipe: a data format ------------------------------------------------------


def read_tsv_captions(path, images_dir=None, errors=None) -> CaptionDataset:
    """`NAME<TAB>caption` lines, as the recipe's example format."""
    path = Path(path)
    images_root = find_images_dir(path, images_dir)
    by_name: dict[str, CaptionedImage] = {}
    for number, line in enumerate(text_lines(read_text(path, errors)), 1):
        if not line.strip():
            continue
        name, _, caption = line.partition("\t")
        try:
            if not caption.strip():
                raise CaptionFileError(f"{path}:{number}: no caption after the tab.")
            where = f"{path}:{number}"
            image = by_name.setdefault(name, CaptionedImage(resolve_image(images_root, name, where), []))
        except CaptionFileError as error:
            record(errors, error, path, number)
            continue
        image.captions.append(caption.strip())
    return CaptionDataset(list(by_name.values()), images_root, str(path))


def test_a_registered_caption_format_trains_and_captions(tmp_path, monkeypatch):
    # Registered for this test only: other tests in the worker see the built-in formats.
    monkeypatch.setattr(caption_files, "_REGISTRY", dict(caption_files._REGISTRY))
    register_format(CaptionFormat("tsv", read_tsv_captions, ("captions.tsv",)))
    data = write_synthetic_dataset(tmp_path / "shapes", num_images=60, image_size=64)
    rows = [line.split(",", 1) for line in data.read_text().splitlines()[1:]]
    (tmp_path / "shapes" / "captions.tsv").write_text("".join(f"{name}\t{caption}\n" for name, caption in rows))
    data.unlink()  # only the TSV file is left for the folder search to find

    config = TrainConfig(data=str(tmp_path / "shapes"), format="tsv", backbone="small_cnn", image_size=64, **SMALL)
    train(config, tmp_path / "run", verbose=0)

    trained = load_run(tmp_path / "run")
    assert trained.config.data == str(tmp_path / "shapes")
    images = sorted((tmp_path / "shapes" / "images").iterdir())[:2]
    captions = [result["caption"] for result in trained.caption_files(images)]
    assert all(captions) and all(word in trained.vocabulary.words for c in captions for word in c.split())

    with pytest.raises(ValueError, match="'tsv' is registered already"):
        register_format(CaptionFormat("tsv", read_tsv_captions))


# -- Recipe: a backbone ---------------------------------------------------------


def tiny_conv(weights: str | None = None, image_size: int = 64) -> keras.Model:
    """Two strided convolutions: 8x8x16 features at 64 px."""
    if weights not in (None, "none"):
        raise ValueError("tiny_conv has no pretrained weights.")
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inputs, x, name="tiny_conv")


def test_a_registered_backbone_trains_and_captions(tmp_path):
    if "tiny_conv" not in BACKBONES:
        register_backbone(BackboneSpec("tiny_conv", tiny_conv, 64, "scale", (8, 8, 16), pretrained=False))
    config = TrainConfig(data="synthetic", synthetic_images=60, synthetic_image_size=64, backbone="tiny_conv", **SMALL)
    train(config, tmp_path / "run", verbose=0)

    trained = load_run(tmp_path / "run")
    assert trained.config.backbone == "tiny_conv" and trained.config.train_backbone  # random weights: it trains
    assert trained.model.feature_shape == (8, 8, 16)
    image = trained.run.load_splits()["splits"]["test"][0]["image"]
    [result] = trained.caption_files([image])
    assert result["caption"] and np.allclose(result["attention"].sum(axis=-1), 1.0, atol=1e-5)


# -- Recipe: a sampler ----------------------------------------------------------


class MinLengthSampler(Sampler):
    """Greedy decoding that may not end a caption before `min_words` words."""

    TENSORS = {"min_words": tf.int32}

    def __init__(self, min_words=3):
        self.min_words = min_words

    def __call__(self, decoder, encoded, max_length):
        def pick(t, log_probs):
            too_early = (t < self.min_words) & tf.equal(tf.range(tf.shape(log_probs)[-1]), END_ID)
            return tf.argmax(tf.where(too_early[None, :], float("-inf"), log_probs), axis=-1, output_type=tf.int32)

        return word_by_word(decoder, encoded, max_length, pick)

    def get_config(self):
        return {"min_words": self.min_words}


def test_a_new_sampler_generates_and_exports(trained_run, tmp_path):
    trained = load_run(trained_run)
    paths = [image["image"] for image in trained.run.load_splits()["splits"]["test"][:4]]
    images = tf.stack([load_image(path, trained.image_size) for path in paths])

    greedy_ids, _, greedy_scores = trained.model.generate({"images": images}, GreedySampler())
    ids, _, scores = trained.model.generate({"images": images}, MinLengthSampler(min_words=0))
    np.testing.assert_array_equal(ids, greedy_ids)  # no constraint: greedy, to the bit
    np.testing.assert_array_equal(scores, greedy_scores)

    greedy_captions = [trained.vocabulary.decode(row) for row in greedy_ids.numpy()]
    assert any(len(caption.split()) < 6 for caption in greedy_captions), greedy_captions  # else nothing to show
    ids, _, _ = trained.model.generate({"images": images}, MinLengthSampler(min_words=6))
    captions = [trained.vocabulary.decode(row) for row in ids.numpy()]
    assert all(len(caption.split()) >= 6 for caption in captions), captions

    archive = build_export_archive(trained.model, trained.vocabulary.words, sampler=MinLengthSampler(6))
    archive.write_out(str(tmp_path / "export"), verbose=False)
    serving = tf.saved_model.load(str(tmp_path / "export"))
    served = serving.signatures["serving_default"](image_bytes=tf.constant([Path(p).read_bytes() for p in paths]))
    assert [c.decode() for c in served["caption"].numpy()] == captions
