"""Training under tf.distribute: MirroredStrategy over two logical CPUs, two worker processes."""

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


def _run(tmp_path, strategy):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(SETTINGS), str(tmp_path / strategy), strategy],
        capture_output=True, text=True, env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mirrored_over_two_cpus_matches_one_device(tmp_path):
    single = _run(tmp_path, "default")
    mirrored = _run(tmp_path, "mirrored")
    # Same global batches, same token-weighted loss: equal up to float summation order.
    for a, b in zip(single, mirrored):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_training_writes_only_the_chiefs_files(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run_dir = tmp_path / "run"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    flags = [
        "--data", "synthetic", "--run-dir", str(run_dir), "--epochs", "1", "--verbose", "0",
        "--strategy", "multi-worker", "--no-train-backbone", "--zoom", "0", "--translate", "0", "--brightness", "0",
        "--synthetic-images", str(TINY["synthetic_images"]), "--synthetic-image-size", str(TINY["synthetic_image_size"]),
        "--batch-size", str(TINY["batch_size"]), "--embedding-dim", str(TINY["embedding_dim"]), "--units", str(TINY["units"]),
    ]
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "TMPDIR": str(scratch)}
        workers.append(subprocess.Popen(kcap_command("train", *flags), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1]
    for name in ("config.json", "vocab.json", "model.keras", "checkpoints/best.keras", "checkpoints/resume.json"):
        assert (run_dir / name).is_file(), name
    # The other worker wrote into its own scratch folder, and removed it.
    assert not [p for p in scratch.iterdir() if p.name.startswith("kcap-worker-")]
