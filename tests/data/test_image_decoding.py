"""Every image the data check accepts decodes to the right RGB pixels, and one that only a full decode
finds damaged stops training with its name, then is left out on request."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from faults import smooth_picture

from kcap.data.check import check_image
from kcap.data.images import load_image
from kcap.training.config import TrainConfig


def test_check_accepts_exactly_what_tensorflow_decodes(messy):
    """The check is neither too strict nor too lax: for each kind, accepted <=> tf.io.decode_image reads it."""
    csv_path, handled, bad, *_ = messy
    for name in list(handled) + [n for n in bad if n != "missing.jpg"]:
        path = csv_path.parent / "images" / name
        error, _ = check_image(path)
        full_error, _ = check_image(path, full_decode=True)
        assert (error is None) == (full_error is None), name
        try:
            tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
            decodes = True
        except (tf.errors.InvalidArgumentError, ValueError):
            decodes = False
        assert decodes == (error is None), (name, error)
        assert decodes == (name in handled), name


def test_a_palette_bmp_which_tensorflow_would_read_as_gray_is_refused(tmp_path):
    rgb = Image.fromarray(smooth_picture())
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.bmp")
    rgb.convert("L").save(tmp_path / "gray.bmp")
    # What the check guards against: TensorFlow decodes it, to other colours than the file's.
    decoded = tf.io.decode_image((tmp_path / "palette.bmp").read_bytes(), channels=3).numpy()
    assert np.abs(decoded.astype(int) - np.asarray(Image.open(tmp_path / "palette.bmp").convert("RGB"))).max() > 100
    error, _ = check_image(tmp_path / "palette.bmp")
    assert error.startswith("8-bit palette BMP: TensorFlow reads its palette indices as gray levels")
    # An 8-bit grayscale BMP has a gray table, which TensorFlow does read right.
    assert check_image(tmp_path / "gray.bmp") == (None, None)
    gray = tf.io.decode_image((tmp_path / "gray.bmp").read_bytes(), channels=3).numpy()
    np.testing.assert_array_equal(gray, np.asarray(Image.open(tmp_path / "gray.bmp").convert("RGB")))


def test_unusual_images_decode_to_the_right_rgb_pixels(messy):
    folder = messy[0].parent / "images"  # holds every kind write_handled_images makes
    expected = smooth_picture().astype(np.float32)
    gray = expected @ np.array([0.299, 0.587, 0.114], np.float32)

    def pixels(name):
        return tf.io.decode_image((folder / name).read_bytes(), channels=3, expand_animations=False).numpy().astype(np.float32)

    # Grayscale: three equal channels. RGBA / palette: alpha dropped, colours kept.
    for name in ("gray.png", "gray.jpg"):
        image = pixels(name)
        assert np.array_equal(image[..., 0], image[..., 1]) and np.abs(image[..., 0] - gray).mean() < 3
    assert np.array_equal(pixels("rgba.png"), expected)
    assert np.abs(pixels("palette.png") - expected).mean() < 8
    # 16-bit PNGs are rescaled to 8 bits (v * 257 → v), not truncated to their low byte.
    assert np.array_equal(pixels("gray16.png")[..., 0], expected[..., 0])
    assert np.array_equal(pixels("rgb16.png"), expected)
    # A CMYK JPEG comes out as RGB, close to the picture (JPEG is lossy).
    assert np.abs(pixels("cmyk.jpg") - expected).mean() < 8
    assert pixels("one_pixel.png").tolist() == [[[200, 30, 40]]]
    # Through kcap's loader (decode, resize): the 1x1 and the 8000x6000 images both come out 64x64.
    assert load_image(str(folder / "one_pixel.png"), (64, 64)).numpy().tolist()[0][0] == [200, 30, 40]
    large = load_image(str(folder / "large.jpg"), (64, 64)).numpy()
    assert large.shape == (64, 64, 3) and large[0, -1, 0] > 200 and large[-1, 0, 1] > 200


def _damaged_inside_jpeg(path):
    """A JPEG whose header and end are intact and whose data is not: only a full decode sees it."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    data[len(data) // 2: len(data) // 2 + 2] = b"\xff\x3d"
    path.write_bytes(bytes(data))
    assert check_image(path) == (None, None) and check_image(path, full_decode=True)[0].startswith("cannot be decoded")
    return path


def test_an_image_damaged_inside_stops_training_with_its_name_then_is_skipped(tmp_path):
    import dataclasses

    from kcap.data.check import DataCheckError
    from kcap.data.synthetic import write_synthetic_dataset
    from kcap.inference import load_run
    from kcap.training.trainer import train

    csv_path = write_synthetic_dataset(tmp_path / "shapes", num_images=20, seed=0, image_size=64)
    damaged = _damaged_inside_jpeg(csv_path.parent / "images" / "damaged.jpg")
    header, *rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([header + ",split", *(row + "," for row in rows), "damaged.jpg,a red circle,train"]) + "\n")
    config = TrainConfig(
        data=str(csv_path), backbone="small_cnn", image_size=64, epochs=1, batch_size=8,
        embedding_dim=8, units=8, val_captions=0,
    )
    run = tmp_path / "run"
    with pytest.raises(DataCheckError) as caught:
        train(config, run, verbose=0)
    message = str(caught.value)
    assert message.startswith("1 image cannot be decoded, damage inside the file")
    assert f"  {damaged}: cannot be decoded (" in message  # then TensorFlow's reason
    assert "add --full-decode --on-bad-image skip" in message
    splits = json.loads((run / "splits.json").read_text())["splits"]
    # As told: the same command with a full check that skips what it finds goes on, and the
    # other images keep the splits they had.
    train(dataclasses.replace(config, full_decode=True, on_bad_image="skip"), run, verbose=0)
    resumed = json.loads((run / "splits.json").read_text())["splits"]
    assert {s: [i for i in items if i["image"] != str(damaged)] for s, items in splits.items()} == resumed
    assert [i["path"] for i in json.loads((run / "config.json").read_text())["data"]["skipped"]["images"]] == [str(damaged)]
    with pytest.raises(ValueError, match=rf"Cannot caption: {damaged}: cannot be decoded"):
        load_run(run).caption_files([damaged])
    # Resumed with the same flags, then with none (the quick check passes the file): the image
    # it left out is not new data, and stays out.
    train(dataclasses.replace(config, epochs=2, full_decode=True, on_bad_image="skip"), run, verbose=0)
    assert json.loads((run / "splits.json").read_text())["splits"] == resumed
    train(dataclasses.replace(config, epochs=3), run, verbose=0)
    assert json.loads((run / "splits.json").read_text())["splits"] == resumed
    assert [e["epoch"] for e in json.loads((run / "history.json").read_text())["epochs"]] == [1, 2, 3]
    assert [i["path"] for i in json.loads((run / "config.json").read_text())["data"]["skipped"]["images"]] == [str(damaged)]
    # Then the data folder moves: the image the run left out at its old place stays out.
    moved = (tmp_path / "shapes").rename(tmp_path / "moved")
    train(dataclasses.replace(config, data=str(moved / "captions.csv"), epochs=4), run, verbose=0)
    splits = json.loads((run / "splits.json").read_text())["splits"]
    assert sum(len(items) for items in splits.values()) == sum(len(items) for items in resumed.values())
    assert all(i["image"].startswith(str(moved)) and Path(i["image"]).name != "damaged.jpg" for items in splits.values() for i in items)


def test_full_decode_finds_damage_inside_the_synthetic_sets_images_and_writes_them_again(tmp_path, monkeypatch, caplog):
    import zlib

    from kcap.data.loading import load_checked_dataset
    from kcap.data.synthetic import cached_synthetic_dataset

    monkeypatch.setenv("KCAP_CACHE_DIR", str(tmp_path))
    damaged = cached_synthetic_dataset(num_images=12, image_size=64).parent / "images" / "00003.png"
    # Zeros in the middle of the compressed pixels, under a recomputed checksum: the chunk
    # structure the quick check verifies stays intact.
    data = bytearray(damaged.read_bytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8:start - 4], "big")
    data[start + length // 2: start + length // 2 + 8] = bytes(8)
    data[start + length: start + length + 4] = zlib.crc32(data[start - 4:start + length]).to_bytes(4, "big")
    damaged.write_bytes(bytes(data))
    assert check_image(damaged) == (None, None)
    config = TrainConfig(
        data="synthetic", synthetic_images=12, synthetic_image_size=64, full_decode=True, on_bad_image="skip"
    ).resolved()
    with caplog.at_level(logging.WARNING, logger="kcap"):
        dataset, report = load_checked_dataset(config.data_settings(), progress=False)
    assert f"{damaged}: cannot be decoded" in caplog.text and "writing it again" in caplog.text
    assert report.ok and len(dataset.images) == 12
    assert check_image(damaged, full_decode=True) == (None, None)
