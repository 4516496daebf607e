"""Reliability (issue #8): messy data is reported before training, bad images are skipped on
request, a run killed at any moment resumes, resources are checked up front, nothing loads by
executing code. Every bad file and every fault is made here, for real; nothing is stored.
docs/reliability.md lists what each test tries and what kcap does.
"""

import ast
import contextlib
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO, TINY, kcap_command

from kcap.data.check import check_data, check_image
from kcap.data.images import load_image
from kcap.training.config import TrainConfig
from kcap.training.run_dir import RunDir
from kcap.text.vocabulary import Vocabulary

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

# Trains on the files of a caption CSV in seconds: a random small_cnn at 64 px.
CSV_FLAGS = [
    "--backbone", "small_cnn", "--image-size", "64", "--epochs", "1", "--batch-size", "16",
    "--embedding-dim", "16", "--units", "32", "--learning-rate", "0.003", "--dropout", "0",
]
# Without per-epoch captioning of the validation images, a third of a tiny run's time: the tests
# that kill a run anywhere and that skip bad images keep it, test_validation_captioning.py tests it.
SYNTHETIC_FLAGS = [
    "--data", "synthetic", "--synthetic-images", str(TINY["synthetic_images"]),
    "--synthetic-image-size", str(TINY["synthetic_image_size"]), "--batch-size", str(TINY["batch_size"]),
    "--embedding-dim", str(TINY["embedding_dim"]), "--units", str(TINY["units"]),
    "--learning-rate", str(TINY["learning_rate"]), "--dropout", "0", "--val-captions", "0", "--verbose", "2",
]


def _run(*args, timeout=600):
    return subprocess.run(kcap_command(*args), env=ENV, capture_output=True, text=True, timeout=timeout)


# --- image files of every kind, made here -------------------------------------------------------------


def _pixels(height=48, width=64, seed=0):
    """A smooth picture (compresses like a photo, not like noise)."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = np.full_like(r, (seed * 37) % 256)
    return np.stack([r, g, b], axis=-1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png_header(path: Path, width=20000, height=20000):
    """A valid PNG header announcing 400 million pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def write_handled_images(folder: Path) -> dict[str, str]:
    """Images that are unusual but fine: name → what is unusual. kcap must decode each one."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_pixels())
    rgb.convert("L").save(folder / "gray.jpg")
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    Image.fromarray((_pixels()[..., 0].astype(np.uint16) * 257)).save(folder / "gray16.png")  # mode I;16
    (folder / "rgb16.png").write_bytes(tf.io.encode_png(tf.constant(_pixels().astype(np.uint16) * 257)).numpy())
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.new("RGB", (1, 1), (200, 30, 40)).save(folder / "one_pixel.png")
    Image.fromarray(_pixels(6000, 8000)).save(folder / "large.jpg", quality=40)
    rgb.save(folder / "progressive.jpg", progressive=True)
    rgb.save(folder / "image.gif")
    rgb.save(folder / "image.bmp")
    rgb.save(folder / "image.webp")
    rgb.save(folder / "png_named.jpg", format="PNG")  # the content decides, not the name
    return {
        "gray.jpg": "grayscale JPEG", "gray.png": "grayscale PNG", "rgba.png": "RGBA PNG",
        "palette.png": "palette PNG with transparency", "gray16.png": "16-bit grayscale PNG",
        "rgb16.png": "16-bit RGB PNG", "cmyk.jpg": "CMYK JPEG", "one_pixel.png": "1x1 image",
        "large.jpg": "8000x6000 JPEG", "progressive.jpg": "progressive JPEG", "image.gif": "GIF",
        "image.bmp": "BMP", "image.webp": "WebP", "png_named.jpg": "PNG named .jpg",
    }


def write_bad_images(folder: Path) -> dict[str, str]:
    """Images kcap cannot train on: name → the start of the reason the check gives."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_pixels())
    (folder / "zero.jpg").write_bytes(b"")
    rgb.save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    rgb.save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) * 2 // 3])
    (folder / "whole.png").unlink()
    (folder / "text.jpg").write_text("<html>404 Not Found</html>\n")
    rgb.save(folder / "image.tif")
    _huge_png_header(folder / "huge.png")
    # missing.jpg: named by the caption file, never written.
    return {
        "missing.jpg": "image file is missing",
        "zero.jpg": "zero-byte file",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "text.jpg": "not an image",
        "image.tif": "unsupported image format TIFF",
        "huge.png": "image too large to decode safely",
    }


# Caption rows with problems, appended to a good CSV: (row bytes, the reason the check gives).
BAD_ROWS = [
    (b"00001.png,\n", "the caption of '00001.png' is empty"),
    (b",a red circle\n", "the image field is empty"),
    (b"00002.png,a red circle,on the left\n", "expected 2 fields, found 3"),
    (b"../outside.png,a red circle\n", "image path '../outside.png' resolves outside"),
    (b"00003.png,a caf\xe9 circle\n", "text is not UTF-8"),
    (b"00004.png,a red circle,\n", "expected 2 fields, found 3"),
]


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A caption CSV over 40 good synthetic images, every handled and every bad image kind, and
    bad rows. Returns (csv path, handled names, bad image names → reason, bad rows → (line, reason))."""
    from kcap.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("messy")
    csv_path = write_synthetic_dataset(root / "data", num_images=40, seed=3, image_size=64)
    images = csv_path.parent / "images"
    handled = write_handled_images(images)
    bad = write_bad_images(images)
    rows = csv_path.read_bytes().splitlines(keepends=True)
    first_caption = rows[1].decode().split(",", 1)[1]
    lines = len(rows)
    extra = []
    for name in list(handled) + list(bad):
        extra.append(f"{name},{first_caption}".encode())  # one caption each: large.jpg decodes in ~1 s
    bad_rows = {}
    for row, reason in BAD_ROWS:
        extra.append(row)
        bad_rows[lines + len(extra)] = reason
    extra.append(rows[1])  # a duplicate of the first row: a warning, kept
    duplicate_line = lines + len(extra)
    csv_path.write_bytes(b"".join(rows + extra))
    return csv_path, handled, bad, bad_rows, duplicate_line


# --- the data check ----------------------------------------------------------------------------------


def test_check_reports_every_bad_image_and_row_with_file_line_and_reason(messy):
    csv_path, handled, bad, bad_rows, duplicate_line = messy
    report = check_data(csv_path, progress=False)
    images = csv_path.parent / "images"
    found_images = report.bad_images
    assert set(found_images) == {str(images / name) for name in bad}
    for name, reason in bad.items():
        assert found_images[str(images / name)].startswith(reason), (name, found_images[str(images / name)])
        # Where the caption file names the image.
        assert "(named at captions.csv:" in found_images[str(images / name)]
    found_rows = {p.line: p.reason for p in report.bad_rows}
    assert set(found_rows) == set(bad_rows)
    for line, reason in bad_rows.items():
        assert reason in found_rows[line], (line, found_rows[line])
        assert all(p.file == str(csv_path) for p in report.bad_rows)
    warned = {(Path(p.file).name, p.line): p.reason for p in report.warnings}
    assert ("captions.csv", duplicate_line) in warned and "repeats line 2" in warned[("captions.csv", duplicate_line)]
    assert "very large image (8000x6000" in warned[("large.jpg", None)]
    assert "tiny image (1x1" in warned[("one_pixel.png", None)]
    # Every image the check accepts is one kcap's pipeline decodes (no surprise mid-epoch).
    accepted = set(report.image_paths) - set(found_images)
    assert {Path(p).name for p in accepted} >= set(handled)
    for path in accepted:
        assert load_image(path, (64, 64)).shape == (64, 64, 3)


def test_an_image_problem_names_the_line_that_names_that_image(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "dog1.jpg")
    (tmp_path / "captions.csv").write_text("image,caption\ndog1.jpg,a dog\ndog1.jpg,a black dog\ng1.jpg,a missing picture\n")
    report = check_data(tmp_path / "captions.csv", progress=False)
    [problem] = report.errors
    assert problem.reason == "image file is missing (named at captions.csv:4)."  # not line 2, where dog1.jpg is
    assert report.summary().endswith(": 2 images, 3 captions; 1 bad image, 0 bad caption rows, 0 warnings.")
    # A JSON file often names every image on one line: no line there, the path names the image.
    (tmp_path / "captions.csv").unlink()
    (tmp_path / "captions.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "dog1.jpg"}, {"id": 2, "file_name": "g1.jpg"}],
        "annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a cat"}],
    }))
    [problem] = check_data(tmp_path / "captions.json", progress=False).errors
    assert (problem.file, problem.reason) == (str(tmp_path / "images" / "g1.jpg"), "image file is missing.")


def test_a_windows_path_in_a_caption_file_says_which_file_it_means(tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    Image.fromarray(_pixels(32, 32)).save(tmp_path / "images" / "sub" / "a.png")
    (tmp_path / "captions.csv").write_text("image,caption\r\nsub\\a.png,a dog\r\n")
    [problem] = check_data(tmp_path / "captions.csv", progress=False).errors
    assert problem.reason == (
        f"image file is missing; {tmp_path / 'images' / 'sub' / 'a.png'} exists: write the folders of its path "
        "with '/', not '\\' (named at captions.csv:2)."
    )


def test_a_file_with_no_usable_row_counts_its_rows_not_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "captions.csv").write_text("image,caption\na.jpg,...\nb.jpg,\n")
    report = check_data(tmp_path / "captions.csv", progress=False)
    assert [p.line for p in report.bad_rows] == [2, 3]
    assert report.summary().endswith(": 0 images, 0 captions; 0 bad images, 2 bad caption rows, 0 warnings.")
    # Said once, of the whole file, and it fails the check.
    assert "no usable caption rows: every row has a problem." in report.format() and not report.ok


def test_captions_written_without_spaces_between_words_get_one_warning(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(_pixels(32, 32)).save(tmp_path / "images" / name)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("image,caption\na.png,一只狗在草地上奔跑\na.png,一只 狗 在 草地 上 奔跑\nb.png,两只猫在睡觉\n", encoding="utf-8")
    report = check_data(csv_path, progress=False)
    [warning] = report.warnings
    assert warning.reason.startswith("2 of 3 captions are written without spaces between words (e.g. '一只狗在草地上奔跑')")
    assert report.ok  # a warning: segmented captions, or a user who wants whole captions, still train
    # Segmented, as a word segmenter writes them, they are words like any others.
    csv_path.write_text("image,caption\na.png,一只 狗 在 草地 上 奔跑\nb.png,两只 猫 在 睡觉\n", encoding="utf-8")
    assert check_data(csv_path, progress=False).warnings == []


def test_repeated_captions_are_a_warning_for_a_caption_file_but_not_for_the_embedded_set(tmp_path, caplog):
    from kcap.data.loading import load_checked_dataset
    from kcap.data.synthetic import write_synthetic_dataset

    # The embedded set draws captions with replacement: its repeats are by design.
    settings = dict(synthetic_images=40, synthetic_image_size=64, seed=0)
    with caplog.at_level("WARNING"):
        dataset, report = load_checked_dataset(TrainConfig(data="synthetic", **settings).data_settings(), progress=False)
    assert any("word for word" in p.reason for p in report.warnings) and len(dataset.images) == 40
    assert "Data check" not in caplog.text
    # Nor the same set written out by `kcap data synthetic` (README's second train command).
    csv_path = write_synthetic_dataset(tmp_path / "shapes", num_images=40, seed=0, image_size=64)
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_checked_dataset(TrainConfig(data=str(csv_path), seed=0).data_settings(), progress=False)
    assert "Data check" not in caplog.text
    # The same rows in a user's caption file: the first few repeats are shown, with their lines.
    (csv_path.parent / "synthetic.json").unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_checked_dataset(TrainConfig(data=str(csv_path), seed=0).data_settings(), progress=False)
    assert f"Data check: {len(report.warnings)} warnings (nothing left out)" in caplog.text
    assert f"{csv_path}:" in caplog.text and "word for word" in caplog.text


def test_a_relative_data_path_gives_a_run_whose_images_are_found_from_anywhere(tmp_path, monkeypatch):
    from kcap.data.loading import load_checked_dataset
    from kcap.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "shapes", num_images=12, seed=0, image_size=64)
    monkeypatch.chdir(tmp_path)
    dataset, _ = load_checked_dataset(TrainConfig(data="shapes/captions.csv", test_fraction=0.25).data_settings(), progress=False)
    manifest = dataset.to_manifest()  # what the run writes as splits.json
    monkeypatch.chdir("/")  # `kcap evaluate --run-dir ...` from elsewhere
    for split in manifest["splits"].values():
        for item in split:
            assert Path(item["image"]).is_absolute() and Path(item["image"]).is_file(), item["image"]


def test_a_run_resumes_from_another_directory_with_another_spelling_of_its_paths(tmp_path, monkeypatch):
    import dataclasses

    from kcap.data.synthetic import write_synthetic_dataset
    from kcap.training.trainer import train

    write_synthetic_dataset(tmp_path / "shapes", num_images=24, seed=0, image_size=64)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(
        data="shapes/captions.csv", backbone="small_cnn", image_size=64, epochs=1, batch_size=8,
        embedding_dim=8, units=8, val_captions=0, cache_dir="features",
    )
    train(config, "run", verbose=0)
    monkeypatch.chdir(tmp_path / "elsewhere")  # the same files, spelt from here
    elsewhere = dataclasses.replace(config, data="../shapes/./captions.csv", cache_dir="../features", epochs=2)
    train(elsewhere, "../run", verbose=0)
    assert [e["epoch"] for e in json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]] == [1, 2]
    saved = TrainConfig.load(tmp_path / "run" / "config.json")
    assert saved.data == str(tmp_path / "shapes" / "captions.csv") and saved.cache_dir == str(tmp_path / "features")


def test_a_resumed_run_keeps_its_splits_and_refuses_data_that_changed(tmp_path):
    import dataclasses

    from kcap.data.synthetic import write_synthetic_dataset
    from kcap.training.trainer import train

    csv_path = write_synthetic_dataset(tmp_path / "shapes", num_images=30, seed=0, image_size=64)
    header, *rows = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text(header + "".join(rows[:100]))  # the first 20 images
    config = TrainConfig(
        data=str(csv_path), backbone="small_cnn", image_size=64, epochs=1, batch_size=8,
        embedding_dim=8, units=8, val_captions=0, val_fraction=0.2, test_fraction=0.2,
    )
    run = tmp_path / "run"
    train(config, run, verbose=0)

    def membership():
        splits = json.loads((run / "splits.json").read_text())["splits"]
        return {item["image"]: (split, sorted(item["captions"])) for split, items in splits.items() for item in items}

    before = membership()
    # The same rows in another order would draw other random splits: the run keeps its own.
    csv_path.write_text(header + "".join(reversed(rows[:100])))
    train(dataclasses.replace(config, epochs=2), run, verbose=0)
    assert membership() == before
    assert [e["epoch"] for e in json.loads((run / "history.json").read_text())["epochs"]] == [1, 2]
    # Ten more images, and one caption changed: resuming would train on test images. Refused.
    changed = rows[1].replace(",", ",a changed caption ", 1)
    csv_path.write_text(header + rows[0] + changed + "".join(rows[2:]))
    with pytest.raises(ValueError, match=r"no longer holds the data this run started with .*10 images added .*; 1 image with other captions"):
        train(dataclasses.replace(config, epochs=3), run, verbose=0)
    assert membership() == before
    # The data folder moved, images and all (another disk, another machine): the same data, resumed.
    csv_path.write_text(header + "".join(rows[:100]))
    moved = (tmp_path / "shapes").rename(tmp_path / "elsewhere")
    # Moved and changed: the change is named by the images' names below their folder.
    (moved / csv_path.name).write_text(header + rows[0] + changed + "".join(rows[2:100]))
    with pytest.raises(ValueError, match=r"1 image with other captions \(e.g. 00000.png\) \(names below .*elsewhere/images, which the run had at .*shapes/images\)"):
        train(dataclasses.replace(config, data=str(moved / csv_path.name), epochs=3), run, verbose=0)
    (moved / csv_path.name).write_text(header + "".join(rows[:100]))
    # Named as the folder, with its format given: the same data still.
    train(dataclasses.replace(config, data=str(moved), format="csv", epochs=3), run, verbose=0)
    old_dir = tmp_path / "shapes"
    assert membership() == {str(moved / Path(image).relative_to(old_dir)): value for image, value in before.items()}
    assert [e["epoch"] for e in json.loads((run / "history.json").read_text())["epochs"]] == [1, 2, 3]


def test_a_run_never_deletes_files_it_did_not_write(tmp_path):
    import dataclasses

    from kcap.data.synthetic import write_synthetic_dataset
    from kcap.training.trainer import train

    csv_path = write_synthetic_dataset(tmp_path / "shapes", num_images=20, seed=0, image_size=64)
    config = TrainConfig(
        data=str(csv_path), backbone="small_cnn", image_size=64, epochs=1, batch_size=8,
        embedding_dim=8, units=8, val_captions=0,
    )
    # A folder of the user's is not a run directory: refused, and left as it was.
    home = tmp_path / "home"
    home.mkdir()
    for name in (".history", ".config", ".model_notes.txt", "notes.txt"):
        (home / name).write_text(name)
    with pytest.raises(ValueError, match=r"home is not empty \(.config, .history, .model_notes.txt and 1 more\) and holds no kcap run"):
        train(config, home, verbose=0)
    assert sorted(p.name for p in home.iterdir()) == [".config", ".history", ".model_notes.txt", "notes.txt"]
    # Nor is one holding files named as a run's, without the config.json that makes it a run.
    theirs = tmp_path / "theirs"
    (theirs / "checkpoints").mkdir(parents=True)
    (theirs / "model.keras").write_text("a model of the user's")
    (theirs / "checkpoints" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"theirs is not empty \(checkpoints, model.keras\) and holds no kcap run"):
        train(config, theirs, verbose=0)
    assert (theirs / "model.keras").read_text() == "a model of the user's"

    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.json").write_text("{}")  # a run killed before its config.json: kcap's own file
    train(config, run, verbose=0)
    # Files of the user's put into the run later, beside what a killed write leaves behind.
    mine = (".history", ".model_notes.txt", ".config.json.bak", "checkpoints/.bestfriends",
            ".history.20241128.json", ".model.backup_1.keras")  # the last two: eight characters where a random part goes
    for name in mine:
        (run / name).write_text("mine")
    partial = (".model.kcap-tmp-k3x_9q2a.keras", ".history.kcap-tmp-a1b2c3d4.json",
               "checkpoints/.resume-0002.weights.kcap-tmp-zz0_qq1w.weights.h5")
    for name in partial:
        (run / name).write_text("partial")
    train(dataclasses.replace(config, epochs=2), run, verbose=0)
    for name in mine:
        assert (run / name).read_text() == "mine"
    for name in partial:
        assert not (run / name).exists()


def test_a_run_killed_while_saving_its_final_model_writes_it_when_run_again(tmp_path, caplog):
    from kcap.data.synthetic import write_synthetic_dataset
    from kcap.inference import load_run
    from kcap.training.trainer import train

    csv_path = write_synthetic_dataset(tmp_path / "shapes", num_images=20, seed=0, image_size=64)
    config = TrainConfig(
        data=str(csv_path), backbone="small_cnn", image_size=64, epochs=1, batch_size=8,
        embedding_dim=8, units=8, val_captions=0,
    )
    run = tmp_path / "run"
    train(config, run, verbose=0)
    images = [i["image"] for i in json.loads((run / "splits.json").read_text())["splits"]["test"]]
    expected = [r["caption"] for r in load_run(run, "last").caption_files(images, progress=False)]
    (run / "model.keras").unlink()  # what a kill during its save leaves: the old name absent
    with caplog.at_level("INFO", logger="kcap"):
        train(config, run, verbose=0)
    assert f"Saved {run / 'model.keras'}, which the run had not finished writing." in caplog.text
    assert load_run(run, "last").model_file == run / "model.keras"
    assert [r["caption"] for r in load_run(run, "last").caption_files(images, progress=False)] == expected


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


def test_a_damaged_resume_checkpoint_is_named_never_silently_restarted(tmp_path):
    import dataclasses
    import shutil

    from kcap.data.synthetic import write_synthetic_dataset
    from kcap.training.trainer import train

    csv_path = write_synthetic_dataset(tmp_path / "shapes", num_images=20, seed=0, image_size=64)
    config = TrainConfig(
        data=str(csv_path), backbone="small_cnn", image_size=64, epochs=1, batch_size=8,
        embedding_dim=8, units=8, val_captions=0,
    )
    train(config, tmp_path / "run", verbose=0)
    more = dataclasses.replace(config, epochs=2)

    def damaged(name, damage):
        run = shutil.copytree(tmp_path / "run", tmp_path / name)
        damage(run)
        return run

    run = damaged("missing", lambda r: (r / "checkpoints" / "resume-0001.weights.h5").unlink())
    with pytest.raises(FileNotFoundError, match=r"resume.json names .*resume-0001.weights.h5, which is missing. To train it again from its start, choose a new --run-dir"):
        train(more, run, verbose=0)
    assert [e["epoch"] for e in json.loads((run / "history.json").read_text())["epochs"]] == [1]  # untouched
    run = damaged("cut", lambda r: (r / "checkpoints" / "resume-0001.weights.h5").write_bytes(b"\x89HDF\r\n" + b"\0" * 994))
    with pytest.raises(ValueError, match=r"Cannot load the resume checkpoint .*cut/checkpoints/resume-0001.weights.h5 \("):
        train(more, run, verbose=0)
    run = damaged("history", lambda r: (r / "history.json").write_text(""))
    with pytest.raises(ValueError, match=r"history.json, line 1: not valid JSON"):
        train(more, run, verbose=0)


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
    rgb = Image.fromarray(_pixels())
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
    expected = _pixels().astype(np.float32)
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


def test_data_check_command_prints_every_problem_and_exits_2(messy):
    csv_path, handled, bad, bad_rows, _ = messy
    result = _run("data", "check", "--data", str(csv_path))
    assert result.returncode == 2, result.stderr[-2000:]
    for name, reason in bad.items():
        assert f"{csv_path.parent / 'images' / name}: {reason}" in result.stdout
    for line, reason in bad_rows.items():
        assert f"{csv_path}:{line}: " in result.stdout and reason in result.stdout
    as_json = json.loads(_run("data", "check", "--data", str(csv_path), "--json").stdout)
    assert len(as_json["errors"]) == len(bad) + len(bad_rows)
    # A clean data set passes.
    from kcap.data.synthetic import write_synthetic_dataset

    clean = write_synthetic_dataset(csv_path.parent.parent / "clean", num_images=12, seed=1, image_size=64)
    result = _run("data", "check", "--data", str(clean.parent), "--full-decode")
    assert result.returncode == 0 and " 0 bad images, 0 bad caption rows" in result.stdout, result.stdout


def test_train_and_features_stop_before_any_work_with_the_whole_report(messy, tmp_path):
    csv_path, _, bad, bad_rows, _ = messy
    run = tmp_path / "run"
    result = _run("train", "--data", str(csv_path), "--run-dir", str(run), *CSV_FLAGS, "--verbose", "2")
    assert result.returncode == 2
    assert "kcap train: error: The data check found problems" in result.stderr
    assert "--on-bad-image skip" in result.stderr
    for name in bad:
        assert str(csv_path.parent / "images" / name) in result.stderr
    for line in bad_rows:
        assert f"{csv_path}:{line}: " in result.stderr
    assert not RunDir(run).config.exists() and not any(RunDir(run).checkpoints.glob("*"))

    result = _run("features", "--data", str(csv_path), "--cache-dir", str(tmp_path / "cache"), *CSV_FLAGS)
    assert result.returncode == 2 and "The data check found problems" in result.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_skip_trains_to_the_end_without_the_bad_images_and_lists_them(messy, tmp_path):
    csv_path, handled, bad, bad_rows, _ = messy
    run = tmp_path / "run"
    result = _run("train", "--data", str(csv_path), "--run-dir", str(run), "--on-bad-image", "skip", *CSV_FLAGS, "--verbose", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    images = csv_path.parent / "images"
    # The output lists every file left out, with its reason.
    assert f"leaving out {len(bad)} images and {len(bad_rows)} caption rows" in result.stderr
    for name, reason in bad.items():
        assert f"{images / name}: {reason}" in result.stderr
    # config.json records exactly the same list.
    skipped = json.loads((run / "config.json").read_text())["data"]["skipped"]
    assert {item["path"] for item in skipped["images"]} == {str(images / name) for name in bad}
    assert all(item["reason"].startswith(bad[Path(item["path"]).name]) for item in skipped["images"])
    assert {(row["file"], row["line"]) for row in skipped["rows"]} == {(str(csv_path), line) for line in bad_rows}
    assert json.loads((run / "config.json").read_text())["settings"]["on_bad_image"] == "skip"
    # Trained on the rest: every handled image is in a split, no bad one is.
    splits = json.loads((run / "splits.json").read_text())["splits"]
    used = {Path(item["image"]).name for split in splits.values() for item in split}
    assert set(handled) <= used and not set(bad) & used
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1] and np.isfinite(history[0]["loss"])


# --- kill anywhere, resume --------------------------------------------------------------------------


def _kill_when(process, condition, timeout=300, interval=0.003):
    """SIGKILLs `process` as soon as `condition()` holds; returns what `condition` returned."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        seen = condition()
        if seen:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return seen
        time.sleep(interval)
    return None


def _completed(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "resume.json").read_text())["completed_epochs"]
    except FileNotFoundError:
        return 0


def _assert_no_half_written_file(run: Path):
    """Every file a run keeps opens: JSON parses, the Keras models load with their vocabulary."""
    from kcap.inference import load_run

    for path in run.rglob("*.json"):
        if not path.name.startswith("."):
            json.loads(path.read_text())
    for checkpoint, path in (("best", run / "checkpoints" / "best.keras"), ("last", run / "model.keras")):
        if path.exists():
            assert load_run(run, checkpoint).model is not None


def test_a_second_train_on_a_run_in_progress_is_refused_and_ctrl_c_stops_the_first_cleanly(tmp_path):
    run = tmp_path / "run"
    args = kcap_command("train", "--run-dir", str(run), "--epochs", "50", *SYNTHETIC_FLAGS)
    # A shell runs background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN:
    # give kcap the default disposition a terminal's foreground command has.
    first = subprocess.Popen(
        args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 300
        while _completed(run) < 1 and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        second = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"kcap train: error: {run} is in use by another kcap process" in second.stderr
        done = _completed(run)
        deadline = time.time() + 300
        while _completed(run) == done and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None and _completed(run) == done + 1  # the first run goes on

        first.send_signal(signal.SIGINT)
        stderr = first.communicate(timeout=120)[1]
        assert first.returncode == 130, stderr[-3000:]
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
        assert f"kcap train: interrupted. Run the same command again to resume {run}" in stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_sigkill_at_any_moment_then_the_same_command_finishes_every_epoch_once(tmp_path):
    run = tmp_path / "run"
    # With the default per-epoch captioning of the validation images: a kill can land in it too.
    args = kcap_command("train", "--run-dir", str(run), "--epochs", "3", *SYNTHETIC_FLAGS, "--val-captions", "200")
    checkpoints = run / "checkpoints"

    def start():
        return subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    kills = []
    # 1. Right after config.json and splits.json are written: while the model is built,
    #    the resume checkpoint looked for and the vocabulary written.
    kills.append(_kill_when(start(), lambda: (run / "config.json").exists() and "after config.json"))
    # 2, 3. While best.keras, then resume-NNNN.weights.h5 is being written: atomic_path's temporary is there.
    def writing(prefix):
        def condition():
            temporaries = [p.name for p in checkpoints.glob(f"{prefix}*")] if checkpoints.is_dir() else []
            return temporaries and f"while writing {temporaries[0]}"
        return condition
    kills.append(_kill_when(start(), writing(".best.")))
    kills.append(_kill_when(start(), writing(".resume-")))
    # 4. Mid-epoch: half a second into the epoch after the next finished one.
    done = _completed(run)
    kills.append(_kill_when(start(), lambda: _completed(run) > done and time.sleep(0.5) is None and "mid-epoch"))
    print("kill points:", kills)
    assert all(kills), f"a kill point was never reached: {kills}"
    assert 1 <= _completed(run) < 3, "the kills should leave epochs to do"
    _assert_no_half_written_file(run)

    done = _completed(run)
    finished = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"Resuming {run} after epoch {done} of 3" in finished.stderr
    assert f"Epoch {done + 1}/3" in finished.stdout and "Epoch 1/3" not in finished.stdout
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2, 3], kills
    # The run killed four times ends where an uninterrupted one does.
    straight = tmp_path / "straight"
    subprocess.run(
        kcap_command("train", "--run-dir", str(straight), "--epochs", "3", *SYNTHETIC_FLAGS, "--val-captions", "200"),
        env=ENV, capture_output=True, check=True, timeout=600,
    )
    for a, b in zip(history, json.loads((straight / "history.json").read_text())["epochs"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5), (a, b)
    assert all(np.isfinite(e["loss"]) for e in history)
    assert _completed(run) == 3
    _assert_no_half_written_file(run)
    # The temporaries the killed writes left behind are cleaned up by the next start.
    assert not [p for p in [*run.glob(".*"), *checkpoints.glob(".*")] if p.is_file()]

    splits = json.loads((run / "splits.json").read_text())["splits"]
    paths = [item["image"] for item in splits["test"][:2]]
    captioned = _run("caption", "--run-dir", str(run), *paths)
    assert captioned.returncode == 0, captioned.stderr[-2000:]
    lines = captioned.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == paths and all(line.split("\t")[1] for line in lines)


# `kcap features` in a real process, recording its progress after every batch instead of every
# 5 s (FeatureCache.save_every_s), so that a kill lands between recorded batches of a short build.
FEATURES_EVERY_BATCH = (
    "import sys\n"
    "from kcap.data.feature_cache import FeatureCache\n"
    "FeatureCache.save_every_s = 0.0\n"
    "from kcap.cli import main\n"
    "sys.exit(main(['features', *sys.argv[1:]]))\n"
)


@pytest.mark.slow
def test_sigkilled_feature_cache_build_resumes_and_matches_a_straight_build(tmp_path):
    flags = ["--data", "synthetic", "--synthetic-images", "600", "--synthetic-image-size", "64",
             "--batch-size", "2", "--embedding-dim", "16", "--units", "32"]
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    args = [sys.executable, "-c", FEATURES_EVERY_BATCH, *flags, "--cache-dir", str(killed_dir)]

    def progress():
        found = list(killed_dir.glob("*/progress.json"))
        if not found:
            return 0
        try:
            return json.loads(found[0].read_text())["done"]
        except (FileNotFoundError, json.JSONDecodeError):  # replaced under our feet: read it next time
            return 0

    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = _kill_when(process, lambda: progress() >= 40 and progress())
    assert done and progress() < 600, "the build finished before it could be killed"
    recorded = progress()
    resumed = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stats = json.loads(resumed.stdout)
    # Only the images after the last recorded batch are computed again.
    assert stats["images"] == 600 and stats["computed"] == 600 - recorded and not stats["reused"]
    straight = subprocess.run(
        [*args[:-1], str(straight_dir)], env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert json.loads(straight.stdout)["computed"] == 600
    [killed_array] = killed_dir.glob("*/features.npy")
    [straight_array] = straight_dir.glob("*/features.npy")
    np.testing.assert_allclose(
        np.load(killed_array).astype(np.float32), np.load(straight_array).astype(np.float32), rtol=1e-2, atol=1e-2
    )


@pytest.mark.slow
def test_sigkilled_export_leaves_no_partial_output_and_reruns(trained_run, tmp_path):
    output = tmp_path / "exported"
    args = kcap_command("export", "--run-dir", str(trained_run), "--output", str(output))
    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = _kill_when(process, lambda: [p.name for p in tmp_path.glob(".exported.*")])
    assert staging, "the export finished before it could be killed"
    assert not output.exists()  # only the staging folder, never a partial export under the real name
    rerun = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (output / "saved_model.pb").is_file()
    # The killed export's staging folder is swept by the rerun.
    assert not list(tmp_path.glob(".exported.*"))


def test_process_killed_the_moment_its_staging_folder_appears_is_swept(tmp_path):
    # The CI flake this pins: a SIGKILL between creating the staging folder and recording its
    # owner left a folder that no later run would remove.
    killed_at_mkdtemp = (
        "import os, signal, sys, tempfile\n"
        "real = tempfile.mkdtemp\n"
        "def mkdtemp_then_die(*args, **kwargs):\n"
        "    real(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "tempfile.mkdtemp = mkdtemp_then_die\n"
        "from kcap.utils.files import atomic_directory\n"
        "with atomic_directory(sys.argv[1]):\n"
        "    pass\n"
    )
    child = subprocess.run([sys.executable, "-c", killed_at_mkdtemp, str(tmp_path / "out")], cwd=REPO)
    assert child.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")], "no staging folder was left"
    from kcap.utils.files import atomic_directory

    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "file").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file"]


def test_a_folder_in_exclusive_use_is_refused_to_a_second_user_until_released(tmp_path):
    from kcap.utils.files import exclusive_use

    with exclusive_use(tmp_path, "kcap tune"):
        with pytest.raises(RuntimeError, match=rf"{tmp_path} is in use by another kcap tune"):
            with exclusive_use(tmp_path, "kcap tune"):
                pass
    with exclusive_use(tmp_path):  # released with the block
        pass


def test_staging_folders_of_live_processes_and_other_hosts_are_left_alone(tmp_path):
    import hashlib
    import socket

    from kcap.utils.files import atomic_directory

    this_host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:12]
    other_host = hashlib.sha1(b"another-host").hexdigest()[:12]

    def staging(kind, pid, host):
        folder = tmp_path / f".out.{kind}abcd1234.kcap-{pid}-{host}"
        folder.mkdir()
        (folder / "partial").write_text("half an export")
        return folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = staging("", dead.pid, this_host)
    abandoned_old = staging("old.", dead.pid, this_host)
    live = staging("", os.getpid(), this_host)
    elsewhere = staging("", dead.pid, other_host)
    unmarked = tmp_path / ".out.someone-elses"
    unmarked.mkdir()
    other_output = tmp_path / f".outer.abcd1234.kcap-{dead.pid}-{this_host}"  # another path's staging
    other_output.mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "file").write_text("done")
    assert (tmp_path / "out" / "file").read_text() == "done"
    assert not abandoned.exists() and not abandoned_old.exists()
    assert live.exists() and elsewhere.exists() and unmarked.exists() and other_output.exists()


# --- resources ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_run_dir_under_a_regular_file_is_reported_before_training(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    run = tmp_path / "a_file" / "run"
    result = _run("train", "--run-dir", str(run), "--epochs", "1", *SYNTHETIC_FLAGS)
    assert result.returncode == 2
    assert f"Cannot write to the run directory {run}: Not a directory" in result.stderr
    assert "Epoch" not in result.stdout


def test_read_only_and_full_disks_are_reported_before_training(tmp_path):
    # Tests run as root, which ignores file modes: a read-only mount is the honest way.
    with _tmpfs(tmp_path / "ro", "ro,size=4m") as read_only:
        with pytest.raises(PermissionError, match=rf"Cannot write to the run directory {read_only}/run: Read-only file system"):
            RunDir(read_only / "run").check_writable()
    with _tmpfs(tmp_path / "small", "size=1m") as small:
        with pytest.raises(OSError, match=rf"Only 1 MiB free on the disk of {small}/run; kcap needs at least 50 MiB"):
            RunDir(small / "run").check_writable()
        result = _run("train", "--run-dir", str(small / "run"), "--epochs", "1", *SYNTHETIC_FLAGS)
        assert result.returncode == 2 and "Only 1 MiB free" in result.stderr
        assert not (small / "run" / "config.json").exists()


def test_a_feature_cache_too_big_for_its_disk_is_reported_before_the_backbone_runs(tmp_path):
    # 80 synthetic images of 4x4x128 float16 features: 320 KiB, on a 256 KiB disk. Written
    # through a memory map, such a cache died of SIGBUS at the first page past the end.
    flags = ["--data", "synthetic", "--synthetic-images", "80", "--synthetic-image-size", str(TINY["synthetic_image_size"])]
    with _tmpfs(tmp_path / "small", "size=256k") as small:
        result = _run("features", "--cache-dir", str(small), *flags)
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"kcap features: error: [Errno 28] The feature cache {small}/" in result.stderr
        assert "needs 0.3 MiB more for its 80 images left, but the disk has only 0.2 MiB free" in result.stderr
        assert not list(small.glob("*/progress.json"))
        # With room, the same build goes through.
        result = _run("features", "--cache-dir", str(tmp_path / "roomy"), *flags)
        assert result.returncode == 0 and '"computed": 80' in result.stdout, result.stderr[-3000:]


def test_a_disk_that_fills_up_during_a_feature_cache_build_names_the_file_and_the_build_resumes(tmp_path):
    # The same 320 KiB of features on a disk of exactly 320 KiB: the check before the build
    # passes, then meta.json and the .npy header take the room of the last rows.
    flags = ["--data", "synthetic", "--synthetic-images", "80", "--synthetic-image-size", str(TINY["synthetic_image_size"])]
    with _tmpfs(tmp_path / "exact", "size=320k") as disk:
        result = _run("features", "--cache-dir", str(disk), *flags)
        assert result.returncode == 2, result.stderr[-3000:]
        failure = re.search(
            rf"kcap features: error: \[Errno 28\] Writing the feature cache {disk}/\w+/features.npy failed: "
            r"No space left on device. (\d+) of its 80 images are recorded; free some space or give another "
            r"--cache-dir, then rerun the same command to compute the rest.",
            result.stderr,
        )
        assert failure, result.stderr[-3000:]
        subprocess.run(["mount", "-o", "remount,size=1m", "tmpfs", str(disk)], check=True)
        result = _run("features", "--cache-dir", str(disk), *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout)["computed"] == 80 - int(failure.group(1))
        resumed = np.load(next(disk.glob("*/features.npy")))
    # Nothing lost or garbled by the failed write: the same features as a build with room.
    result = _run("features", "--cache-dir", str(tmp_path / "roomy"), *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(resumed, np.load(next((tmp_path / "roomy").glob("*/features.npy"))))


@pytest.mark.slow
def test_disk_filling_up_mid_run_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path):
    with _tmpfs(tmp_path / "disk", "size=64m") as disk:
        run = disk / "run"
        args = kcap_command("train", "--run-dir", str(run), "--epochs", "3", *SYNTHETIC_FLAGS)
        process = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        filler = disk / "filler"
        deadline = time.time() + 300
        while _completed(run) < 1 and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        # Fill the disk: the next checkpoint write fails with ENOSPC.
        with open(filler, "wb") as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 2**20)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode != 0, "training finished although the disk was full"
        assert "No space left on device" in stderr or "Errno 28" in stderr, stderr[-3000:]
        assert f"while writing {run}/" in stderr, stderr[-3000:]  # which file could not be written
        assert _completed(run) >= 1
        _assert_no_half_written_file(run)
        filler.unlink()
        finished = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stderr[-3000:]
        history = json.loads((run / "history.json").read_text())["epochs"]
        assert [e["epoch"] for e in history] == [1, 2, 3]


# --- safe loading --------------------------------------------------------------------------------------

UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _python_files():
    for folder in ("kcap", "tuning"):
        yield from sorted((REPO / folder).rglob("*.py"))


def unsafe_code(source: str, name: str) -> list[str]:
    """Every place in `source` that runs code or unpickles: eval/exec/compile, pickle-like modules,
    `allow_pickle=True`, `safe_mode=False`, Keras' unsafe deserialisation switch."""
    offences = []
    for node in ast.walk(ast.parse(source, filename=name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in UNSAFE_CALLS:
            offences.append(f"{where}: {node.func.id}()")
        if isinstance(node, ast.Import):
            offences += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            offences.append(f"{where}: from {node.module} import ...")
        if isinstance(node, ast.keyword) and node.arg in ("allow_pickle", "safe_mode"):
            # Only the safe constant passes: allow_pickle=False, safe_mode=True.
            if not (isinstance(node.value, ast.Constant) and node.value.value is (node.arg == "safe_mode")):
                offences.append(f"{where}: {node.arg}={ast.unparse(node.value)}")
        if isinstance(node, ast.Attribute) and node.attr == "enable_unsafe_deserialization":
            offences.append(f"{where}: .{node.attr}")
    return offences


def test_no_pickle_eval_or_exec_anywhere_in_the_package():
    files = list(_python_files())
    assert len(files) > 30  # the package was found
    offences = [o for path in files for o in unsafe_code(path.read_text(), str(path.relative_to(REPO)))]
    assert not offences, "code that loads by executing:\n" + "\n".join(offences)


@pytest.mark.parametrize(
    "line",
    [
        "import pickle", "import cloudpickle as cp", "from marshal import loads", "eval('1 + 1')",
        "exec(text)", "np.load(path, allow_pickle=True)", "np.load(path, allow_pickle=flag)",
        "keras.models.load_model(path, safe_mode=False)", "keras.config.enable_unsafe_deserialization()",
    ],
)
def test_the_scan_catches_each_pattern(line):
    assert unsafe_code(f"import numpy as np\n{line}\n", "sample.py"), line
    assert not unsafe_code("np.load(path, allow_pickle=False)\nload_model(p, safe_mode=True)\nmodel.compile()\n", "ok.py")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
        ({"epochs": "10"}, r"key 'epochs' should be <class 'int'>, got '10'"),
        ({"epochs": True}, r"key 'epochs' should be <class 'int'>, got True"),
        ({"learning_rate": None}, r"key 'learning_rate' should be <class 'float'>, got None"),
        ({"data": ...}, r"missing key\(s\) \['data'\]"),
    ],
)
def test_config_json_is_validated_on_load(tmp_path, change, message):
    settings = TrainConfig(data="synthetic", **TINY).to_json()
    for key, value in change.items():
        if value is ...:
            del settings[key]
        else:
            settings[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"settings": settings}))
    with pytest.raises(ValueError, match=rf"{path}: {message}"):
        TrainConfig.load(path)


def test_another_programs_config_json_is_not_read_as_a_run(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"port": 8080, "project": "web"}))
    with pytest.raises(ValueError, match=rf"{path} is not a kcap configuration \(no 'settings'\); is {tmp_path} a kcap run directory"):
        TrainConfig.load(path)


def test_bad_on_bad_image_value_is_refused():
    with pytest.raises(ValueError, match="on_bad_image must be 'error' or 'skip'"):
        TrainConfig(data="synthetic", on_bad_image="ignore").resolved()
    result = _run("train", "--run-dir", "unused", "--data", "synthetic", "--on-bad-image", "ignore")
    assert result.returncode == 2 and "invalid choice: 'ignore'" in result.stderr


@pytest.mark.parametrize(
    "data, message",
    [
        ({"format": "kcap.vocabulary", "version": 1, "max_length": 5}, r"keys missing \['words'\]"),
        ({"format": "kcap.vocabulary", "version": 1, "max_length": 5, "words": [], "extra": 1}, r"unknown \['extra'\]"),
        ({"format": "kcap.vocabulary", "version": 1, "max_length": "5", "words": []}, r"'max_length' must be an integer"),
        ({"format": "kcap.vocabulary", "version": 1, "max_length": 5, "words": ["<pad>", 3]}, r"'words' must be a list of strings"),
        ({"format": "kcap.vocabulary", "version": 1, "max_length": 5, "words": ["a", "b"]}, r"A vocabulary must start with the special tokens"),
        ({"format": "kcap.vocabulary", "version": 2, "max_length": 5, "words": []}, r"unsupported vocabulary version 2"),
        ({"words": ["<pad>"]}, r"not a kcap vocabulary"),
    ],
)
def test_vocab_json_is_validated_on_load(tmp_path, data, message):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{path}: (keys missing \[\] / )?{message}"):
        Vocabulary.load(path)


def test_a_tampered_run_is_refused_with_the_file_and_key(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["words"][5] = 7
    (run / "vocab.json").write_text(json.dumps(vocab))
    result = _run("caption", "--run-dir", str(run), "anything.png")
    assert result.returncode == 2
    assert f"kcap caption: error: {run / 'vocab.json'}: 'words' must be a list of strings" in result.stderr


def test_a_damaged_or_missing_checkpoint_is_named_with_what_to_do(trained_run, tmp_path, caplog):
    import shutil

    from kcap.inference import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    image = json.loads((run / "splits.json").read_text())["splits"]["test"][0]["image"]
    best = run / "checkpoints" / "best.keras"
    best.write_bytes(best.read_bytes()[:1000])  # a copy cut short
    result = _run("caption", "--run-dir", str(run), image)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{best} is not a complete .keras file (truncated or damaged" in result.stderr
    assert "--checkpoint last" in result.stderr
    assert load_run(run, "last").model_file == run / "model.keras"
    # Without best.keras the last epoch's model is used, and the user is told so.
    best.unlink()
    with caplog.at_level("WARNING", logger="kcap"):
        assert load_run(run, "best").model_file == run / "model.keras"
    assert f"{best} is missing; using {run / 'model.keras'} (the last epoch)" in caplog.text


def test_hyperparameter_files_are_validated_on_load(tmp_path):
    from kcap.training.hparams import apply_hparams

    config = TrainConfig(data="synthetic")
    path = tmp_path / "best.json"
    for content, message in [
        ('{"units": 64, "dropout": "high"}', r"key 'dropout' should be <class 'float'>, got 'high'"),
        ('{"unit": 64}', r"unknown setting\(s\) \['unit'\]"),
        ('{"units": 64,}', r"line 1: not valid JSON"),
        ('[64]', r"expected a JSON object"),
    ]:
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            apply_hparams(config, path)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a folder; give the JSON file itself"):
        apply_hparams(config, tmp_path)


@pytest.mark.slow
def test_a_nan_loss_stops_training_cleanly_with_a_message(tmp_path):
    run = tmp_path / "run"
    flags = [f for f in SYNTHETIC_FLAGS]
    flags[flags.index("--learning-rate") + 1] = "1e12"  # diverges in the first steps
    result = _run("train", "--run-dir", str(run), "--epochs", "2", *flags)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "kcap train: error: Training stopped in epoch 1: the loss became nan" in result.stderr
    assert "--clipnorm" in result.stderr and "Traceback" not in result.stderr
    # No model with NaN weights is left as the run's result, and no checkpoint of the NaN epoch.
    assert not (run / "model.keras").exists() and not (run / "checkpoints" / "best.keras").exists()
    assert _completed(run) == 0
    # Nor is the stopped epoch listed as finished (history.json would also not be valid JSON with NaN).
    assert not (run / "history.json").exists()
