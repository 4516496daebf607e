"""Callbacks: vocabulary export, resumable checkpoints, best model, history."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np

from kcap.text.vocabulary import Vocabulary
from kcap.utils.files import atomic_path, atomic_write_json


class VocabularyExport(keras.callbacks.Callback):
    """Writes the vocabulary into the run directory when training starts.

    Every checkpoint written later has its vocabulary beside it.

    Example:

    ```python
    model.fit(ds, callbacks=[VocabularyExport(vocab, "run/vocab.json")])
    ```
    """

    def __init__(self, vocabulary: Vocabulary, path: str | Path):
        super().__init__()
        self.vocabulary = vocabulary
        self.path = Path(path)

    def on_train_begin(self, logs=None):
        if not self.path.is_file() or Vocabulary.load(self.path) != self.vocabulary:
            self.vocabulary.save(self.path)


class ResumeCheckpoint(keras.callbacks.Callback):
    """Saves weights and optimizer state after every epoch, atomically.

    `restore` loads them back before `fit` and returns the epoch to start
    from, so the run continues where it stopped. Unlike
    `keras.callbacks.BackupAndRestore`, a process killed mid-write leaves the
    previous checkpoint intact.
    """

    def __init__(self, weights_path: str | Path, state_path: str | Path):
        super().__init__()
        self.weights_path = Path(weights_path)
        self.state_path = Path(state_path)

    def on_epoch_end(self, epoch, logs=None):
        with atomic_path(self.weights_path) as tmp:
            self.model.save_weights(tmp)
        atomic_write_json(self.state_path, {
            "completed_epochs": epoch + 1,
            # Weights files leave out the random generators' states; without
            # them a resumed run would augment and drop out differently.
            "seed_states": {v.path: v.numpy().tolist() for v in _seed_states(self.model)},
        })

    @staticmethod
    def restore(model: keras.Model, weights_path: str | Path, state_path: str | Path) -> int:
        """Loads the last checkpoint into `model`; returns the number of finished epochs."""
        state_path, weights_path = Path(state_path), Path(weights_path)
        if not state_path.is_file() or not weights_path.is_file():
            return 0
        state = json.loads(state_path.read_text())
        # Optimizer slots are created lazily; make them exist so their state loads too.
        model.optimizer.build(model.trainable_variables)
        model.load_weights(weights_path)
        saved_seeds = state.get("seed_states", {})
        for variable in _seed_states(model):
            if variable.path in saved_seeds:
                variable.assign(np.asarray(saved_seeds[variable.path], dtype=variable.dtype))
        return int(state["completed_epochs"])


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (`.keras`) when `monitor` improves, atomically.

    Args:
        path: where the `.keras` file goes.
        monitor: a key of the epoch logs, e.g. `"val_loss"`.
        mode: `"min"` or `"max"`.
        best: the best value so far (when resuming).
    """

    def __init__(self, path: str | Path, monitor: str = "val_loss", mode: str = "min", best: float | None = None):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.best = best if best is not None else (math.inf if mode == "min" else -math.inf)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        improved = value < self.best if self.mode == "min" else value > self.best
        if improved and np.isfinite(value):
            self.best = value
            with atomic_path(self.path) as tmp:
                self.model.save(tmp)


class HistoryLog(keras.callbacks.Callback):
    """Keeps `history.json`: one entry per finished epoch, across resumed runs."""

    def __init__(self, path: str | Path, previous: list[dict] | None = None):
        super().__init__()
        self.path = Path(path)
        self.epochs = list(previous or [])

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            entry[key] = float(value)
        self.epochs = [e for e in self.epochs if e["epoch"] != epoch + 1] + [entry]
        atomic_write_json(self.path, {"epochs": self.epochs})

    @staticmethod
    def load(path: str | Path, completed_epochs: int) -> list[dict]:
        """Entries of the first `completed_epochs` epochs (a later one may lack its checkpoint)."""
        path = Path(path)
        if not path.is_file():
            return []
        epochs = json.loads(path.read_text())["epochs"]
        return [e for e in epochs if e["epoch"] <= completed_epochs]
