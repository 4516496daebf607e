"""Messy data is reported before training (every bad image and caption row, with its file, line and
reason), and left out on request with --on-bad-image skip. docs/reliability.md lists each case."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faults import CSV_FLAGS, run_kcap, smooth_picture

from kcap.data.check import check_data
from kcap.data.images import load_image
from kcap.training.config import TrainConfig
from kcap.training.run_dir import RunDir


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
    Image.fromarray(smooth_picture(32, 32)).save(tmp_path / "images" / "sub" / "a.png")
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
        Image.fromarray(smooth_picture(32, 32)).save(tmp_path / "images" / name)
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


def test_data_check_command_prints_every_problem_and_exits_2(messy):
    csv_path, handled, bad, bad_rows, _ = messy
    result = run_kcap("data", "check", "--data", str(csv_path))
    assert result.returncode == 2, result.stderr[-2000:]
    for name, reason in bad.items():
        assert f"{csv_path.parent / 'images' / name}: {reason}" in result.stdout
    for line, reason in bad_rows.items():
        assert f"{csv_path}:{line}: " in result.stdout and reason in result.stdout
    as_json = json.loads(run_kcap("data", "check", "--data", str(csv_path), "--json").stdout)
    assert len(as_json["errors"]) == len(bad) + len(bad_rows)
    # A clean data set passes.
    from kcap.data.synthetic import write_synthetic_dataset

    clean = write_synthetic_dataset(csv_path.parent.parent / "clean", num_images=12, seed=1, image_size=64)
    result = run_kcap("data", "check", "--data", str(clean.parent), "--full-decode")
    assert result.returncode == 0 and " 0 bad images, 0 bad caption rows" in result.stdout, result.stdout


def test_train_and_features_stop_before_any_work_with_the_whole_report(messy, tmp_path):
    csv_path, _, bad, bad_rows, _ = messy
    run = tmp_path / "run"
    result = run_kcap("train", "--data", str(csv_path), "--run-dir", str(run), *CSV_FLAGS, "--verbose", "2")
    assert result.returncode == 2
    assert "kcap train: error: The data check found problems" in result.stderr
    assert "--on-bad-image skip" in result.stderr
    for name in bad:
        assert str(csv_path.parent / "images" / name) in result.stderr
    for line in bad_rows:
        assert f"{csv_path}:{line}: " in result.stderr
    assert not RunDir(run).config.exists() and not any(RunDir(run).checkpoints.glob("*"))

    result = run_kcap("features", "--data", str(csv_path), "--cache-dir", str(tmp_path / "cache"), *CSV_FLAGS)
    assert result.returncode == 2 and "The data check found problems" in result.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_skip_trains_to_the_end_without_the_bad_images_and_lists_them(messy, tmp_path):
    csv_path, handled, bad, bad_rows, _ = messy
    run = tmp_path / "run"
    result = run_kcap("train", "--data", str(csv_path), "--run-dir", str(run), "--on-bad-image", "skip", *CSV_FLAGS, "--verbose", "2")
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
