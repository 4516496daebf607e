"""Outputs appear whole or not at all: a killed export leaves no partial folder, staging folders of dead
processes are swept (and only theirs), folders in use are locked, and a run deletes only what it wrote."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, kcap_command
from faults import ENV, kill_when

from kcap.training.config import TrainConfig


@pytest.mark.slow
def test_sigkilled_export_leaves_no_partial_output_and_reruns(trained_run, tmp_path):
    output = tmp_path / "exported"
    args = kcap_command("export", "--run-dir", str(trained_run), "--output", str(output))
    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = kill_when(process, lambda: [p.name for p in tmp_path.glob(".exported.*")])
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
