"""Callbacks: vocabulary export, resumable checkpoints, best model, history."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from kcap.text.vocabulary import Vocabulary
from kcap.utils.files import atomic_path, atomic_write_json, read_json


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

    Each epoch's weights go to a new file, `resume-NNNN.weights.h5` beside
    `state_path`; then `state_path` (JSON) is replaced to name it; then older
    weights files are removed. A process killed at any point leaves a state
    file naming complete weights of the epoch it says. `restore` loads them
    back before `fit` and returns the epoch to start from. Unlike
    `keras.callbacks.BackupAndRestore`, a kill mid-write loses nothing.

    Example:

    ```python
    start = ResumeCheckpoint.restore(model, "run/checkpoints/resume.json")  # 0 on a new run
    model.fit(ds, epochs=10, initial_epoch=start, callbacks=[ResumeCheckpoint("run/checkpoints/resume.json")])
    ```
    """

    def __init__(self, state_path: str | Path):
        super().__init__()
        self.state_path = Path(state_path)

    def on_epoch_end(self, epoch, logs=None):
        if _diverged(logs):
            return  # TerminateOnNaN stopped this epoch: keep the last good checkpoint
        weights = self.state_path.parent / f"resume-{epoch + 1:04d}.weights.h5"
        with atomic_path(weights) as tmp:
            self.model.save_weights(tmp)
        atomic_write_json(self.state_path, {
            "completed_epochs": epoch + 1,
            "weights": weights.name,
            # EarlyStopping (placed before this callback) has decided by now.
            "stopped_early": bool(self.model.stop_training),
            # Weights files leave out the random generators' states; without
            # them a resumed run would augment and drop out differently.
            "seed_states": {v.path: v.numpy().tolist() for v in _seed_states(self.model)},
        })
        for old in self.state_path.parent.glob("resume-*.weights.h5"):
            if old != weights:
                old.unlink(missing_ok=True)

    @staticmethod
    def weights_path(state_path: str | Path) -> Path | None:
        """The weights file the state names, or None before the first epoch."""
        state_path = Path(state_path)
        if not state_path.is_file():
            return None
        return state_path.parent / read_json(state_path, "The resume checkpoint")["weights"]

    @staticmethod
    def restore(model: keras.Model, state_path: str | Path) -> int:
        """Loads the last checkpoint into `model`; returns the number of finished epochs.

        A state that names a missing or unreadable weights file is an error: going on from
        epoch 0 in silence would overwrite the run's history and best model.
        """
        state_path = Path(state_path)
        if not state_path.is_file():
            return 0
        state = read_json(state_path, "The resume checkpoint")
        weights_path = state_path.parent / state["weights"]
        start_over = "To train it again from its start, choose a new --run-dir."
        if not weights_path.is_file():
            raise FileNotFoundError(f"{state_path} names {weights_path}, which is missing. {start_over}")
        # Optimizer slots are created lazily; make them exist so their state loads too.
        model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(weights_path)
        except Exception as error:  # h5py and Keras raise several kinds for a damaged file
            raise ValueError(f"Cannot load the resume checkpoint {weights_path} ({error}). {start_over}") from None
        saved_seeds = state.get("seed_states", {})
        for variable in _seed_states(model):
            if variable.path in saved_seeds:
                variable.assign(np.asarray(saved_seeds[variable.path], dtype=variable.dtype))
        return int(state["completed_epochs"])

    @staticmethod
    def stopped_early(state_path: str | Path) -> bool:
        state_path = Path(state_path)
        return state_path.is_file() and bool(read_json(state_path, "The resume checkpoint").get("stopped_early"))


def _diverged(logs: dict | None) -> bool:
    """Whether the epoch's loss is NaN or infinite: an epoch `TerminateOnNaN` cut short."""
    loss = (logs or {}).get("loss")
    return loss is not None and not np.isfinite(float(loss))


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (`.keras`) when `monitor` improves, atomically.

    Args:
        path: where the `.keras` file goes.
        monitor: a key of the epoch logs, e.g. `"val_loss"`.
        mode: `"min"` or `"max"`.
        best: the best value so far (when resuming).

    Example:

    ```python
    model.fit(ds, validation_data=val_ds, epochs=10,
              callbacks=[BestModelCheckpoint("run/checkpoints/best.keras", monitor="val_bleu4", mode="max")])
    ```
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


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that remembers, across a resume, how long it has waited.

    Args:
        previous: the monitored values of the epochs finished before this `fit`.
        **kwargs: as for `EarlyStopping`.

    Example:

    ```python
    seen = [e["val_loss"] for e in HistoryLog.load("run/history.json", start)]
    stop = ResumableEarlyStopping(seen, monitor="val_loss", mode="min", patience=3)
    model.fit(ds, validation_data=val_ds, epochs=20, initial_epoch=start, callbacks=[stop])
    ```
    """

    def __init__(self, previous: list[float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.previous = list(previous or [])

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        lower_is_better = self.mode == "min" or (self.mode == "auto" and "acc" not in self.monitor)
        for epoch, value in enumerate(self.previous):
            improved = self.best is None or (
                value < self.best - abs(self.min_delta) if lower_is_better else value > self.best + abs(self.min_delta)
            )
            if improved:
                self.best, self.best_epoch, self.wait = value, epoch, 0
            else:
                self.wait += 1


class HistoryLog(keras.callbacks.Callback):
    """Keeps `history.json`: one entry per finished epoch, across resumed runs.

    Example:

    ```python
    previous = HistoryLog.load("run/history.json", start)  # the epochs before `start`
    model.fit(ds, epochs=10, initial_epoch=start, callbacks=[HistoryLog("run/history.json", previous)])
    ```
    """

    def __init__(self, path: str | Path, previous: list[dict] | None = None):
        super().__init__()
        self.path = Path(path)
        self.epochs = list(previous or [])

    def on_epoch_end(self, epoch, logs=None):
        if _diverged(logs):
            return  # TerminateOnNaN stopped this epoch: it did not finish, and has no checkpoint
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
        epochs = read_json(path, "The run's history")["epochs"]
        return [e for e in epochs if e["epoch"] <= completed_epochs]
