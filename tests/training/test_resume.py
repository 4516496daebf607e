"""A run resumes with the data it started with: the same splits, its files found however their paths
are spelt or wherever they moved; changed data or a damaged resume checkpoint is refused by name."""

import contextlib
import json
from pathlib import Path

import pytest

from kcap.training.config import TrainConfig


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



def test_a_cosine_schedule_resumes_where_it_stopped_and_refuses_another_epochs(tmp_path, monkeypatch):
    import dataclasses

    import keras

    from kcap.data.synthetic import write_synthetic_dataset
    from kcap.training import trainer

    csv_path = write_synthetic_dataset(tmp_path / "shapes", num_images=20, seed=0, image_size=64)
    config = TrainConfig(
        data=str(csv_path), backbone="small_cnn", image_size=64, epochs=2, batch_size=8,
        embedding_dim=8, units=8, val_captions=0, lr_schedule="cosine", warmup_epochs=0.5,
    )
    seen = []  # (event, optimizer steps, learning rate)

    class Stop(Exception):
        pass

    class Record(keras.callbacks.Callback):
        def __init__(self, stop):
            super().__init__()
            self.stop = stop

        def record(self, event):
            optimizer = self.model.optimizer
            seen.append((event, int(optimizer.iterations), float(optimizer.learning_rate)))

        def on_train_begin(self, logs=None):
            self.record("begin")

        def on_epoch_end(self, epoch, logs=None):
            self.record("end")
            if self.stop:
                raise Stop  # after the resume checkpoint: as if killed between epochs

    callbacks = trainer._callbacks
    for stop in (True, False):
        monkeypatch.setattr(trainer, "_callbacks", lambda *args, stop=stop: [*callbacks(*args), Record(stop)])
        with pytest.raises(Stop) if stop else contextlib.nullcontext():
            trainer.train(config, tmp_path / "run", verbose=0)
    [(_, _, first_rate), (_, steps, _), (_, resumed_at, resumed_rate), (_, end, last_rate)] = seen
    assert first_rate == 0.0 and resumed_at == steps and end == 2 * steps
    schedule = trainer.learning_rate_schedule(config, steps)
    assert resumed_rate == pytest.approx(float(schedule(steps))) and 0 < resumed_rate < config.learning_rate
    assert last_rate == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"other settings \(epochs: 2 → 3\)"):
        trainer.train(dataclasses.replace(config, epochs=3), tmp_path / "run", verbose=0)
