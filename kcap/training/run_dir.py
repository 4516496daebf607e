"""The layout of a run directory."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from kcap.utils.files import read_json

# The checkpoints of a run `--checkpoint` names (`RunDir.model_path`).
CHECKPOINTS = ("best", "last")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Where a run keeps its files.

    ```
    RUN/
      config.json          every setting used, plus what was derived from the data
      vocab.json           the vocabulary (exported when training starts)
      splits.json          images and captions of each split
      history.json         one entry per finished epoch
      model.keras          the model after the last epoch
      checkpoints/best.keras         best by --monitor (the training loss without validation images)
      checkpoints/resume-NNNN.weights.h5  weights + optimizer of the last finished epoch
      checkpoints/resume.json        which epoch that was, which file, the random states
      logs/                TensorBoard
      eval_<split>.json    scores and captions from `kcap evaluate`
      results_<split>.json the same captions as a COCO results file
    ```
    """

    # Every name a run writes, by folder (`*`: a split, an epoch number): all that the
    # cleanup of a killed run's temporaries may touch.
    FILES = ("config.json", "vocab.json", "splits.json", "history.json", "model.keras", "eval_*.json", "results_*.json")
    CHECKPOINT_FILES = ("best.keras", "resume.json", "resume-*.weights.h5")

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / "config.json")
    vocabulary = property(lambda self: self.path / "vocab.json")
    splits = property(lambda self: self.path / "splits.json")
    history = property(lambda self: self.path / "history.json")
    final_model = property(lambda self: self.path / "model.keras")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_model = property(lambda self: self.path / "checkpoints" / "best.keras")
    resume_state = property(lambda self: self.path / "checkpoints" / "resume.json")

    logs = property(lambda self: self.path / "logs")

    def evaluation(self, split: str) -> Path:
        return self.path / f"eval_{split}.json"

    def results(self, split: str) -> Path:
        """The COCO results file (`[{"image_id", "caption"}]`) of `kcap evaluate`."""
        return self.path / f"results_{split}.json"

    def read_config(self) -> dict:
        """`config.json` as written: the settings, the data, the vocabulary size, the normalization."""
        return read_json(self.config, "The run's config")

    def exists(self) -> bool:
        return self.config.is_file()

    def model_path(self, which: str = "best") -> Path:
        """`best` (falls back to the final model) or `last`."""
        if which == "best" and self.best_model.is_file():
            return self.best_model
        if self.final_model.is_file():
            return self.final_model
        if self.best_model.is_file():
            return self.best_model
        raise FileNotFoundError(
            f"No trained model in {self.path}: expected {self.best_model} or {self.final_model}. "
            f"Run `kcap train --run-dir {self.path} ...` first."
        )

    def load_splits(self) -> dict:
        if not self.splits.is_file():
            raise FileNotFoundError(f"{self.splits} is missing; is {self.path} a kcap run directory?")
        return read_json(self.splits, "The run's split file")

    def check_writable(self, min_free_bytes: int = 50 * 2**20) -> None:
        """Fails early, naming the path, when the run directory cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-"):
                pass
        except OSError as error:
            raise PermissionError(f"Cannot write to the run directory {self.path}: {error.strerror}.") from None
        free = shutil.disk_usage(self.path).free
        if free < min_free_bytes:
            raise OSError(
                f"Only {free / 2**20:.0f} MiB free on the disk of {self.path}; "
                f"kcap needs at least {min_free_bytes / 2**20:.0f} MiB for checkpoints."
            )


def ensure_dirs(run: RunDir) -> None:
    for path in (run.path, run.checkpoints, run.logs):
        os.makedirs(path, exist_ok=True)
