"""A run killed at any moment (SIGKILL, Ctrl-C) or started twice: the same command finishes every epoch
once, as an uninterrupted run does, and a killed feature-cache build resumes where it stopped."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import kcap_command
from faults import ENV, SYNTHETIC_FLAGS, assert_no_half_written_file, completed_epochs, kill_when

from kcap.training.config import TrainConfig


@pytest.mark.long
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
        while completed_epochs(run) < 1 and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        second = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"kcap train: error: {run} is in use by another kcap process" in second.stderr
        done = completed_epochs(run)
        deadline = time.time() + 300
        while completed_epochs(run) == done and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None and completed_epochs(run) == done + 1  # the first run goes on

        first.send_signal(signal.SIGINT)
        stderr = first.communicate(timeout=120)[1]
        assert first.returncode == 130, stderr[-3000:]
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
        assert f"kcap train: interrupted. Run the same command again to resume {run}" in stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
@pytest.mark.long
def test_sigkill_at_any_moment_then_the_same_command_finishes_every_epoch_once(tmp_path):
    from kcap.inference import load_run

    run = tmp_path / "run"
    # With the default per-epoch captioning of the validation images: a kill can land in it too.
    args = kcap_command("train", "--run-dir", str(run), "--epochs", "3", *SYNTHETIC_FLAGS, "--val-captions", "200")
    checkpoints = run / "checkpoints"

    def start():
        return subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    kills = []
    # 1. Right after config.json and splits.json are written: while the model is built,
    #    the resume checkpoint looked for and the vocabulary written.
    kills.append(kill_when(start(), lambda: (run / "config.json").exists() and "after config.json"))
    # 2, 3. While best.keras, then resume-NNNN.weights.h5 is being written: atomic_path's temporary is there.
    def writing(prefix):
        def condition():
            temporaries = [p.name for p in checkpoints.glob(f"{prefix}*")] if checkpoints.is_dir() else []
            return temporaries and f"while writing {temporaries[0]}"
        return condition
    kills.append(kill_when(start(), writing(".best.")))
    kills.append(kill_when(start(), writing(".resume-")))
    # 4. Mid-epoch: half a second into the epoch after the next finished one.
    done = completed_epochs(run)
    kills.append(kill_when(start(), lambda: completed_epochs(run) > done and time.sleep(0.5) is None and "mid-epoch"))
    print("kill points:", kills)
    assert all(kills), f"a kill point was never reached: {kills}"
    assert 1 <= completed_epochs(run) < 3, "the kills should leave epochs to do"
    assert_no_half_written_file(run)

    done = completed_epochs(run)
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
    assert completed_epochs(run) == 3
    assert_no_half_written_file(run)
    # The temporaries the killed writes left behind are cleaned up by the next start.
    assert not [p for p in [*run.glob(".*"), *checkpoints.glob(".*")] if p.is_file()]

    splits = json.loads((run / "splits.json").read_text())["splits"]
    paths = [item["image"] for item in splits["test"][:2]]
    # In this process (what `kcap caption` calls): a fresh one would cost a TensorFlow start.
    rows = load_run(run).caption_files(paths, progress=False)
    assert [row["image"] for row in rows] == paths and all(row["caption"] for row in rows)


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
    # 100 batches of 2: killed after 20 of them, 80 are left to resume.
    images = 200
    flags = ["--data", "synthetic", "--synthetic-images", str(images), "--synthetic-image-size", "64",
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
    done = kill_when(process, lambda: progress() >= 40 and progress())
    assert done and progress() < images, "the build finished before it could be killed"
    recorded = progress()
    resumed = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stats = json.loads(resumed.stdout)
    # Only the images after the last recorded batch are computed again.
    assert stats["images"] == images and stats["computed"] == images - recorded and not stats["reused"]
    straight = subprocess.run(
        [*args[:-1], str(straight_dir)], env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert json.loads(straight.stdout)["computed"] == images
    [killed_array] = killed_dir.glob("*/features.npy")
    [straight_array] = straight_dir.glob("*/features.npy")
    np.testing.assert_allclose(
        np.load(killed_array).astype(np.float32), np.load(straight_array).astype(np.float32), rtol=1e-2, atol=1e-2
    )


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
