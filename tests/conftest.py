import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KCAP_SHARED", REPO.parent / "shared"))

# Small enough to train in seconds on two CPU cores.
TINY = dict(
    synthetic_images=80, synthetic_image_size=64, epochs=2, batch_size=16,
    embedding_dim=16, units=32, learning_rate=0.003, dropout=0.0,
)


# The files that take longest, in that order, run first: `scripts/test.sh` hands whole files to
# its workers in collection order (--no-loadscope-reorder; xdist would otherwise start the files
# with the most tests first), so these start while the short ones fill the other workers.
LONGEST_FIRST = (
    "test_browser.py", "test_serve.py", "test_tuning.py", "test_interrupted_runs.py", "test_export.py",
    "test_distribute.py", "test_metrics.py",
    "test_disk_space.py", "test_bad_data.py", "test_training.py", "test_recipes.py", "test_decoders.py",
    "test_captioner_generate.py", "test_atomic_files.py", "test_feature_cache.py", "test_resume.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


@pytest.fixture(scope="session", autouse=True)
def kcap_cache(tmp_path_factory):
    """Synthetic sets are generated into a per-session cache, never into ~/.cache."""
    cache = tmp_path_factory.mktemp("kcap-cache")
    os.environ["KCAP_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_config():
    from kcap.training.config import TrainConfig

    return TrainConfig(data="synthetic", **TINY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_config):
    """A tiny run trained once for the tests that caption, evaluate and reload."""
    from kcap.training.trainer import train

    run_dir = tmp_path_factory.mktemp("run")
    train(tiny_config, run_dir, verbose=0)
    return run_dir


@pytest.fixture(scope="session")
def messy(tmp_path_factory):
    """A caption CSV over 40 good synthetic images, every handled and every bad image kind, and
    bad rows. Returns (csv path, handled names, bad image names → reason, bad rows → (line, reason))."""
    from faults import BAD_ROWS, write_bad_images, write_handled_images

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


def kcap_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kcap", *args]


@pytest.fixture(scope="module")
def trained(trained_run):
    """The conftest run's model with its test images, as paths and as a batch."""
    from kcap.data.pipeline import image_dataset
    from kcap.inference import load_run

    run = load_run(trained_run)
    paths = [item["image"] for item in run.run.load_splits()["splits"]["test"]]
    batches = image_dataset(paths, run.image_size, batch_size=64)
    images = np.concatenate([batch["images"].numpy() for batch in batches])
    return run, paths, {"images": images}
