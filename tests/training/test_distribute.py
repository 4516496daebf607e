"""Training and tuning under tf.distribute: MirroredStrategy over two logical CPUs, two worker processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import TINY, kcap_command

# No augmentation, no dropout and a frozen backbone (batch norm in inference mode):
# then splitting a batch across replicas changes nothing but the order of float sums.
SETTINGS = {**TINY, "epochs": 1, "train_backbone": False, "zoom": 0.0, "translate": 0.0, "brightness": 0.0}

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kcap.training.config import TrainConfig
    from kcap.training.trainer import train
    settings, run_dir, strategy = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    history = train(TrainConfig(data="synthetic", strategy=strategy, **settings), run_dir, verbose=0)
    print(json.dumps(history["epochs"]))
""")


TUNE_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kcap.training.config import TrainConfig
    from tuning.search import search
    settings, directory, strategy = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    space = {"units": {"type": "choice", "values": [16, 32]}}
    config = TrainConfig(data="synthetic", strategy=strategy, **settings)
    result = search(config, directory, max_trials=2, search_space=space, verbose=0)
    print(json.dumps(result.summary))
""")


def _run(tmp_path, strategy, script=SCRIPT, settings=SETTINGS):
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(settings), str(tmp_path / strategy), strategy],
        capture_output=True, text=True, env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.long
def test_mirrored_over_two_cpus_matches_one_device(tmp_path):
    # With the attention regulariser, a mean over captions beside the cross-entropy's over words.
    settings = {**SETTINGS, "attention_regularizer": 1.0, "label_smoothing": 0.1}
    single = _run(tmp_path, "default", settings=settings)
    mirrored = _run(tmp_path, "mirrored", settings=settings)
    # Same global batches, same token- and caption-weighted loss: equal up to float summation order.
    for a, b in zip(single, mirrored):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.long
def test_tuning_mirrored_over_two_cpus_matches_one_device(tmp_path):
    # Trials score val_loss: no per-epoch captioning (the training tests above and below caption).
    settings = {**SETTINGS, "cache_features": True, "cache_dir": str(tmp_path / "features"), "val_captions": 0}
    single = _run(tmp_path, "default", TUNE_SCRIPT, settings)
    mirrored = _run(tmp_path, "mirrored", TUNE_SCRIPT, settings)
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    single, mirrored = single["trials"], mirrored["trials"]
    assert [t["status"] for t in mirrored] == ["COMPLETED"] * 2
    # The same trials, each scoring what it scored on one device.
    assert [t["hyperparameters"] for t in mirrored] == [t["hyperparameters"] for t in single]
    for a, b in zip(single, mirrored):
        assert b["objective"] == pytest.approx(a["objective"], rel=1e-4)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(args: list[str], scratch, num_workers: int = 2) -> list[str]:
    """Runs `kcap ARGS` as the workers of a cluster on 127.0.0.1 (two by default); returns their stdout."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(num_workers)]}
    workers = []
    for index in range(num_workers):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "TMPDIR": str(scratch)}
        workers.append(subprocess.Popen(kcap_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        # A worker left behind by the other waits in a collective: a time limit, not a hung suite.
        outputs = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        # What the workers do together each epoch is traced once, without noise in the user's log.
        assert "AutoGraph could not transform" not in err and "triggered tf.function retracing" not in err, err[-3000:]
    return [out for out, _ in outputs]


@pytest.mark.slow
@pytest.mark.long
def test_multi_worker_training_writes_only_the_chiefs_files(tmp_path):
    run_dir = tmp_path / "run"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # Monitoring a captioning score, which the chief also writes to TensorBoard: every worker
    # must see the same value, or a worker the chief's early stop left behind waits forever.
    flags = [
        "--data", "synthetic", "--run-dir", str(run_dir), "--verbose", "0", "--monitor", "val_bleu4",
        "--early-stopping", "1", "--strategy", "multi-worker", "--no-train-backbone",
        "--zoom", "0", "--translate", "0", "--brightness", "0",
        "--synthetic-images", str(TINY["synthetic_images"]), "--synthetic-image-size", str(TINY["synthetic_image_size"]),
        "--batch-size", str(TINY["batch_size"]), "--embedding-dim", str(TINY["embedding_dim"]), "--units", str(TINY["units"]),
    ]

    def train(epochs):
        _run_workers(["train", *flags, "--epochs", str(epochs)], scratch)
        return json.loads((run_dir / "history.json").read_text())["epochs"]

    assert [e["epoch"] for e in train(1)] == [1]
    for name in ("config.json", "vocab.json", "model.keras", "checkpoints/best.keras", "checkpoints/resume.json"):
        assert (run_dir / name).is_file(), name
    # The other worker wrote into its own scratch folder, and removed it.
    assert not [p for p in scratch.iterdir() if p.name.startswith("kcap-worker-")]
    # Resumed for more epochs, until the score stops improving: both workers stop together.
    history = train(6)
    assert "val_bleu4" in history[-1] and 2 <= len(history) < 6
    assert json.loads((run_dir / "checkpoints" / "resume.json").read_text())["stopped_early"]
    assert not [p for p in scratch.iterdir() if p.name.startswith("kcap-worker-")]


@pytest.mark.slow
def test_multi_worker_training_in_a_cluster_of_one_worker(tmp_path):
    # One machine in TF_CONFIG, as when trying a multi-worker setup out before adding machines.
    run_dir = tmp_path / "run"
    flags = [
        "--data", "synthetic", "--run-dir", str(run_dir), "--verbose", "0", "--epochs", "1", "--val-captions", "0",
        "--strategy", "multi-worker", "--no-train-backbone",
        "--synthetic-images", str(TINY["synthetic_images"]), "--synthetic-image-size", str(TINY["synthetic_image_size"]),
        "--batch-size", str(TINY["batch_size"]), "--embedding-dim", str(TINY["embedding_dim"]), "--units", str(TINY["units"]),
    ]
    _run_workers(["train", *flags], tmp_path, num_workers=1)
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1] and history[0]["loss"] > 0
    assert (run_dir / "model.keras").is_file() and any((run_dir / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.long
def test_multi_worker_hyperband_writes_only_the_chiefs_files_and_reloads_its_search(tmp_path):
    directory = tmp_path / "tune"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"units": {"type": "choice", "values": [16, 32, 48]}}))
    flags = [
        # Hyperband, 3 epochs, factor 3: three 1-epoch trials, then the best one continued from its
        # checkpoint, which every worker must read (the chief wrote it during this very search).
        "--data", "synthetic", "--directory", str(directory), "--search-space", str(space), "--epochs", "3",
        "--tuner", "hyperband", "--val-captions", "0",  # trials score val_loss
        "--verbose", "0", "--strategy", "multi-worker", "--no-train-backbone", "--cache-features",
        "--cache-dir", str(tmp_path / "features"), "--zoom", "0", "--translate", "0", "--brightness", "0",
        "--synthetic-images", str(TINY["synthetic_images"]), "--synthetic-image-size", str(TINY["synthetic_image_size"]),
        "--batch-size", str(TINY["batch_size"]), "--embedding-dim", str(TINY["embedding_dim"]),
    ]

    def tune(max_trials):
        outputs = _run_workers(["tune", *flags, "--max-trials", str(max_trials)], scratch)
        # Both workers ran the same search and found the same best trial.
        best = [[line for line in out.splitlines() if line.startswith("Best hyperparameters")] for out in outputs]
        assert best[0] == best[1] and len(best[0]) == 1
        summary = json.loads((directory / "summary.json").read_text())
        assert summary["replicas"] == 2  # one per worker: the trials trained across both
        return summary["trials"]

    first = tune(4)
    assert [t["status"] for t in first] == ["COMPLETED"] * 4
    assert [t["epochs"] for t in first] == [1, 1, 1, 2]
    assert (directory / "best_hyperparameters.json").is_file() and (directory / "tuning.json").is_file()
    # The other worker searched in its own scratch copy, and removed it.
    assert not list(scratch.iterdir())
    # Run again: both workers reload the chief's finished search and train nothing.
    trial_files = sorted((p, p.stat().st_mtime_ns) for p in directory.glob("trials/*/kcap_trial.json"))
    assert tune(4) == first
    assert sorted((p, p.stat().st_mtime_ns) for p in directory.glob("trials/*/kcap_trial.json")) == trial_files
    assert not list(scratch.iterdir())
