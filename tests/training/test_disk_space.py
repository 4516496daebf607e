"""A disk that is full, read-only or too small is reported before the work starts, or names the file it
could not write when it fills up midway; then the same command resumes. Uses real tmpfs mounts."""

import contextlib
import json
import re
import subprocess
import time

import numpy as np
import pytest

from conftest import TINY, kcap_command
from faults import ENV, SYNTHETIC_FLAGS, assert_no_half_written_file, completed_epochs, run_kcap, tmpfs

from kcap.training.run_dir import RunDir


def test_run_dir_under_a_regular_file_is_reported_before_training(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    run = tmp_path / "a_file" / "run"
    result = run_kcap("train", "--run-dir", str(run), "--epochs", "1", *SYNTHETIC_FLAGS)
    assert result.returncode == 2
    assert f"Cannot write to the run directory {run}: Not a directory" in result.stderr
    assert "Epoch" not in result.stdout


def test_read_only_and_full_disks_are_reported_before_training(tmp_path):
    # Tests run as root, which ignores file modes: a read-only mount is the honest way.
    with tmpfs(tmp_path / "ro", "ro,size=4m") as read_only:
        with pytest.raises(PermissionError, match=rf"Cannot write to the run directory {read_only}/run: Read-only file system"):
            RunDir(read_only / "run").check_writable()
    with tmpfs(tmp_path / "small", "size=1m") as small:
        with pytest.raises(OSError, match=rf"Only 1 MiB free on the disk of {small}/run; kcap needs at least 50 MiB"):
            RunDir(small / "run").check_writable()
        result = run_kcap("train", "--run-dir", str(small / "run"), "--epochs", "1", *SYNTHETIC_FLAGS)
        assert result.returncode == 2 and "Only 1 MiB free" in result.stderr
        assert not (small / "run" / "config.json").exists()


# 80 synthetic images of 4x4x128 float16 features: 320 KiB.
FEATURE_FLAGS = ["--data", "synthetic", "--synthetic-images", "80", "--synthetic-image-size", str(TINY["synthetic_image_size"])]


@pytest.fixture(scope="module")
def roomy_build(tmp_path_factory):
    """`kcap features` on a disk with room: the build that the ones on small disks are held to."""
    folder = tmp_path_factory.mktemp("roomy")
    return run_kcap("features", "--cache-dir", str(folder), *FEATURE_FLAGS), folder


def test_a_feature_cache_too_big_for_its_disk_is_reported_before_the_backbone_runs(tmp_path, roomy_build):
    # The 320 KiB of features on a 256 KiB disk. Written through a memory map, such a cache died
    # of SIGBUS at the first page past the end.
    with tmpfs(tmp_path / "small", "size=256k") as small:
        result = run_kcap("features", "--cache-dir", str(small), *FEATURE_FLAGS)
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"kcap features: error: [Errno 28] The feature cache {small}/" in result.stderr
        assert "needs 0.3 MiB more for its 80 images left, but the disk has only 0.2 MiB free" in result.stderr
        assert not list(small.glob("*/progress.json"))
    # With room, the same build goes through.
    result, _ = roomy_build
    assert result.returncode == 0 and '"computed": 80' in result.stdout, result.stderr[-3000:]


def test_a_disk_that_fills_up_during_a_feature_cache_build_names_the_file_and_the_build_resumes(tmp_path, roomy_build):
    # The 320 KiB of features on a disk of exactly 320 KiB: the check before the build
    # passes, then meta.json and the .npy header take the room of the last rows.
    with tmpfs(tmp_path / "exact", "size=320k") as disk:
        result = run_kcap("features", "--cache-dir", str(disk), *FEATURE_FLAGS)
        assert result.returncode == 2, result.stderr[-3000:]
        failure = re.search(
            rf"kcap features: error: \[Errno 28\] Writing the feature cache {disk}/\w+/features.npy failed: "
            r"No space left on device. (\d+) of its 80 images are recorded; free some space or give another "
            r"--cache-dir, then rerun the same command to compute the rest.",
            result.stderr,
        )
        assert failure, result.stderr[-3000:]
        subprocess.run(["mount", "-o", "remount,size=1m", "tmpfs", str(disk)], check=True)
        result = run_kcap("features", "--cache-dir", str(disk), *FEATURE_FLAGS)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout)["computed"] == 80 - int(failure.group(1))
        resumed = np.load(next(disk.glob("*/features.npy")))
    # Nothing lost or garbled by the failed write: the same features as a build with room.
    result, roomy = roomy_build
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(resumed, np.load(next(roomy.glob("*/features.npy"))))


@pytest.mark.slow
@pytest.mark.long
def test_disk_filling_up_mid_run_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path):
    with tmpfs(tmp_path / "disk", "size=64m") as disk:
        run = disk / "run"
        args = kcap_command("train", "--run-dir", str(run), "--epochs", "3", *SYNTHETIC_FLAGS)
        process = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        filler = disk / "filler"
        deadline = time.time() + 300
        while completed_epochs(run) < 1 and process.poll() is None and time.time() < deadline:
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
        assert completed_epochs(run) >= 1
        assert_no_half_written_file(run)
        filler.unlink()
        finished = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stderr[-3000:]
        history = json.loads((run / "history.json").read_text())["epochs"]
        assert [e["epoch"] for e in history] == [1, 2, 3]
