"""Running a keras-tuner search over the captioner, resuming it, and handing back its results.

A search directory holds:

```
DIR/tuning.json               the search's settings (base config, tuner, objective, space)
DIR/summary.json              one row per trial: id, status, hyperparameters, objective, epochs, seconds
DIR/best_hyperparameters.json the best trial's settings, for `kcap train --hparams`
DIR/logs/<trial_id>/          TensorBoard (scalars and the HParams dashboard)
DIR/trials/                   keras-tuner's project: oracle.json, trial_<id>/trial.json and checkpoints
```

Running the same search again on the same directory continues it: finished
trials are kept, a trial that was interrupted runs again from its start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import tensorflow as tf
from keras_tuner.engine.tuner import maybe_distribute

import kcap
from kcap import compat
from kcap.training.config import TrainConfig
from kcap.training.distribute import barrier, is_chief, make_strategy, writable_directory
from kcap.training.hparams import apply_hparams
from kcap.utils.files import atomic_write_json, atomic_write_text, exclusive_use
from tuning.hypermodel import (
    CaptionerHyperModel, load_search_space, prepare_tuning_data, typed_value, validate_search_space,
)
from tuning.options import DEFAULT_SEARCH_SPACE, OBJECTIVES, TUNERS

log = logging.getLogger("kcap")

PROJECT = "trials"  # keras-tuner's project folder inside the search directory
TRIAL_INFO = "kcap_trial.json"  # epochs and seconds of a trial, beside keras-tuner's trial.json


@dataclasses.dataclass(frozen=True)
class SearchDir:
    """The files of a search directory (see the module docstring)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    settings = property(lambda self: self.path / "tuning.json")
    summary = property(lambda self: self.path / "summary.json")
    best_hyperparameters = property(lambda self: self.path / "best_hyperparameters.json")
    logs = property(lambda self: self.path / "logs")
    project = property(lambda self: self.path / PROJECT)


# -- --hparams ----------------------------------------------------------------


# -- the tuners -----------------------------------------------------------------


class _AtomicOracleState:
    """Oracle mixin: `oracle.json` and `trial.json` are written atomically, and a reload
    never re-runs a trial whose `trial.json` already says COMPLETED.

    keras-tuner writes its state files in place, so a process killed mid-write
    would leave a truncated JSON file the next run cannot read.
    """

    def save(self):
        atomic_write_text(compat.oracle_file(self), json.dumps(self.get_state()))

    def _save_trial(self, trial):  # keras-tuner's private hook: see kcap.compat.trial_file
        atomic_write_text(compat.trial_file(self, trial.trial_id), json.dumps(trial.get_state()))

    def reload(self):
        super().reload()
        compat.forget_finished_retries(self)


def _oracle_class(base: type) -> type:
    return type(f"Kcap{base.__name__}", (_AtomicOracleState, base), {})


class KcapTuner(keras_tuner.Tuner):
    """A keras-tuner `Tuner` that records each trial's epochs and seconds, writes
    `summary.json` after every trial, saves its state atomically and puts
    TensorBoard logs in `logs/<trial_id>` (keras-tuner's default adds `execution0`).
    """

    def __init__(self, oracle, hypermodel, directory: str | Path, chief_directory: str | Path | None = None, **kwargs):
        # Tuner.__init__, not the parent's: the oracle is made here (with atomic state files).
        keras_tuner.Tuner.__init__(self, oracle, hypermodel, directory=str(directory), project_name=PROJECT, **kwargs)
        self.search_dir = SearchDir(directory)
        # Where the chief writes the search, when this process works in a copy of it (another worker
        # of a multi-worker search): the trials' checkpoints are written there only.
        self.chief_directory = Path(chief_directory or directory)
        if not os.path.exists(compat.tuner_file(self)):
            # Saved now, so a search killed in its first trial also resumes (keras-tuner
            # reloads only when this file exists, and writes it only after a trial).
            self.save()

    def save(self):
        if not compat.tuner_is_worker(self):
            self.oracle.save()
        atomic_write_text(compat.tuner_file(self), json.dumps(self.get_state()))

    def run_trial(self, trial, *args, **kwargs):
        start = time.perf_counter()
        histories = super().run_trial(trial, *args, **kwargs)
        epochs = sum(len(h.epoch) for h in histories if isinstance(h, keras.callbacks.History))
        atomic_write_json(Path(self.get_trial_dir(trial.trial_id)) / TRIAL_INFO, {
            "epochs": epochs, "seconds": round(time.perf_counter() - start, 3),
        })
        # The chief's checkpoint of this trial is written before any worker goes on (Hyperband reads it).
        barrier(self.distribution_strategy)
        return histories

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        write_summary(self, self.search_dir)

    def _get_tensorboard_dir(self, logdir, trial_id, execution):  # keras-tuner's private hook
        if self.executions_per_trial == 1:
            return os.path.join(str(logdir), str(trial_id))
        return compat.default_tensorboard_dir(self, logdir, trial_id, execution)


class KcapHyperband(KcapTuner, keras_tuner.Hyperband):
    """Hyperband's trial logic (epoch budgets, weights carried between rounds) in a `KcapTuner`."""

    def _build_hypermodel(self, hp):  # keras-tuner's private hook: see kcap.compat.build_trial_model
        model = compat.build_trial_model(self, hp)
        if "tuner/trial_id" in hp.values:
            checkpoint = Path(compat.checkpoint_file(self, hp.values["tuner/trial_id"]))
            # keras-tuner saves checkpoints on the chief only (other workers' go to a temporary folder).
            checkpoint = self.chief_directory / checkpoint.relative_to(self.directory)
            with maybe_distribute(self.distribution_strategy):
                model.load_weights(checkpoint)
        return model


def check_tuner_arguments(kind: str, objective: str, max_trials: int, max_epochs: int) -> None:
    """Refuses what `make_tuner` cannot search with, naming the flag."""
    if kind not in TUNERS:
        raise ValueError(f"--tuner must be one of {list(TUNERS)}, got {kind!r}.")
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {list(OBJECTIVES)}, got {objective!r}.")
    if max_trials < 1:
        raise ValueError(f"--max-trials must be at least 1, got {max_trials}.")
    if kind == "hyperband" and max_epochs < 2:
        raise ValueError("--tuner hyperband needs --epochs of at least 2 (it trains trials for a part of them).")


def make_tuner(
    kind: str,
    hypermodel: CaptionerHyperModel,
    directory: str | Path,
    objective: str = "val_loss",
    max_trials: int = 10,
    max_epochs: int = 10,
    seed: int = 0,
    distribution_strategy: tf.distribute.Strategy | None = None,
    chief_directory: str | Path | None = None,
) -> KcapTuner:
    """A `KcapTuner` of `kind` (`random`, `hyperband`, `bayesian`) over `hypermodel`.

    It reloads the search in `directory` when there is one. For `hyperband`,
    `max_epochs` is the most epochs a trial trains and `max_trials` caps the
    number of trials. Trials build their model in `distribution_strategy`'s
    scope (a `tf.distribute.Strategy`; `None`: the default one). A worker
    other than the chief searches in a copy of the chief's `chief_directory`.

    Example:

    ```python
    tuner = make_tuner("random", hypermodel, "tune", max_trials=4)
    tuner.search(epochs=2)
    ```
    """
    check_tuner_arguments(kind, objective, max_trials, max_epochs)
    goal = keras_tuner.Objective(objective, direction=OBJECTIVES[objective])
    oracles = keras_tuner.oracles
    seed = compat.oracle_seed(seed)
    if kind == "random":
        oracle = _oracle_class(oracles.RandomSearchOracle)(objective=goal, max_trials=max_trials, seed=seed)
        return KcapTuner(oracle, hypermodel, directory, chief_directory, distribution_strategy=distribution_strategy)
    if kind == "bayesian":
        try:
            import sklearn  # noqa: F401  keras-tuner's Bayesian oracle needs it
        except ImportError:
            raise RuntimeError("--tuner bayesian needs scikit-learn: pip install scikit-learn") from None
        oracle = _oracle_class(oracles.BayesianOptimizationOracle)(objective=goal, max_trials=max_trials, seed=seed)
        return KcapTuner(oracle, hypermodel, directory, chief_directory, distribution_strategy=distribution_strategy)
    oracle = _oracle_class(oracles.HyperbandOracle)(objective=goal, max_epochs=max_epochs, factor=3, seed=seed)
    compat.limit_trials(oracle, max_trials)
    return KcapHyperband(oracle, hypermodel, directory, chief_directory, distribution_strategy=distribution_strategy)


# -- results --------------------------------------------------------------------


def hyperparameter_values(trial) -> dict[str, Any]:
    """A trial's training settings (keras-tuner's own `tuner/...` bookkeeping left out)."""
    return {k: typed_value(k, v) for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}


def trial_rows(tuner: keras_tuner.Tuner) -> list[dict]:
    """One row per trial, in the order trials started."""
    oracle = tuner.oracle
    order = list(dict.fromkeys([*oracle.start_order, *sorted(oracle.trials)]))
    rows = []
    for trial_id in order:
        trial = oracle.trials[trial_id]
        info_path = Path(tuner.get_trial_dir(trial_id)) / TRIAL_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        rows.append({
            "trial_id": trial_id,
            "status": trial.status,
            "hyperparameters": hyperparameter_values(trial),
            # null, not NaN, for a trial that diverged: NaN is not JSON that jq or JavaScript reads.
            "objective": None if trial.score is None or not math.isfinite(trial.score) else float(trial.score),
            # keras-tuner counts the epochs of this trial's fit, which for a trial Hyperband
            # continues begins after the earlier round's epochs.
            "best_epoch": None if trial.best_step is None else (
                int(trial.best_step) + 1 + int(trial.hyperparameters.values.get("tuner/initial_epoch", 0))
            ),
            "epochs": info.get("epochs"),
            "seconds": info.get("seconds"),
        })
    return rows


def best_trial(tuner: keras_tuner.Tuner):
    """The best completed trial, or `None` when no trial completed."""
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    if not completed:
        return None
    return tuner.oracle.get_best_trials(1)[0]


def write_summary(tuner: keras_tuner.Tuner, search_dir: SearchDir) -> dict:
    """Writes `summary.json` (and `best_hyperparameters.json` once a trial completed); returns the summary."""
    objective = tuner.oracle.objective
    best = best_trial(tuner)
    strategy = getattr(tuner, "distribution_strategy", None)
    summary = {
        "kcap_version": kcap.__version__,
        "objective": {"name": objective.name, "direction": objective.direction},
        # What each trial trained on: its scores are those of the global batch over these replicas.
        "replicas": 1 if strategy is None else int(strategy.num_replicas_in_sync),
        "trials": trial_rows(tuner),
        "best": None if best is None else {
            "trial_id": best.trial_id, "objective": float(best.score), "hyperparameters": hyperparameter_values(best),
        },
    }
    atomic_write_json(search_dir.summary, summary)
    if best is not None:
        atomic_write_json(search_dir.best_hyperparameters, hyperparameter_values(best))
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a text table, best trial marked with `*`.

    >>> print(format_summary({"objective": {"name": "val_loss"}, "best": {"trial_id": "0"}, "trials": [
    ...     {"trial_id": "0", "status": "COMPLETED", "hyperparameters": {"units": 32},
    ...      "objective": 1.5, "epochs": 1, "seconds": 2.0}]}))
    trial  status     units  val_loss  epochs  seconds
    0*     COMPLETED  32     1.5000    1       2.0
    """
    names = list(dict.fromkeys(k for row in summary["trials"] for k in row["hyperparameters"]))
    best_id = (summary.get("best") or {}).get("trial_id")
    header = ["trial", "status", *names, summary["objective"]["name"], "epochs", "seconds"]
    table = [header]
    for row in summary["trials"]:
        hps = [_format_value(row["hyperparameters"].get(n)) for n in names]
        objective = "-" if row["objective"] is None else f"{row['objective']:.4f}"
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
        epochs = "-" if row["epochs"] is None else str(row["epochs"])
        mark = "*" if row["trial_id"] == best_id else ""
        table.append([f"{row['trial_id']}{mark}", row["status"], *hps, objective, epochs, seconds])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def _format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -- the search -----------------------------------------------------------------


@dataclasses.dataclass
class SearchResult:
    """What `search` hands back: the tuner (for `get_best_models`), the summary and the best settings."""

    tuner: KcapTuner
    summary: dict
    best_hyperparameters: dict | None
    search_dir: SearchDir


# Settings no trial uses: they shape the --retrain-best run only, so they may change on resume.
RETRAIN_ONLY = ("monitor", "val_captions")


def _check_settings(search_dir: SearchDir, settings: dict) -> None:
    """A directory holds one search: resuming it with other settings is refused (--max-trials may grow)."""
    if not search_dir.settings.is_file():
        if search_dir.project.exists():
            raise ValueError(
                f"{search_dir.path} holds a keras-tuner project but no tuning.json; choose another --directory."
            )
        return
    saved = json.loads(search_dir.settings.read_text(encoding="utf-8"))
    changed = [k for k in ("settings", "tuner", "objective", "search_space") if saved.get(k) != settings[k]]
    details = []
    for key in changed:
        if key == "settings":
            old, new = saved.get("settings") or {}, settings["settings"]
            details += [
                f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k) and k not in RETRAIN_ONLY
            ]
        else:
            details.append(f"{key}: {saved.get(key)!r} → {settings[key]!r}")
    if details:
        raise ValueError(
            f"{search_dir.path} holds a search with other settings ({'; '.join(details)}). "
            "Re-run with the same settings to resume it (only --max-trials, --monitor and --val-captions may change), "
            "or choose a new --directory."
        )


def search(
    config: TrainConfig,
    directory: str | Path,
    tuner: str = "random",
    max_trials: int = 10,
    objective: str = "val_loss",
    search_space: str | Path | dict = DEFAULT_SEARCH_SPACE,
    verbose: int | str = "auto",
) -> SearchResult:
    """Searches `search_space` around `config` (each trial trains `config.epochs` epochs,
    fewer with `config.early_stopping` once its objective stalls for that many).

    Re-running it on the same `directory` continues the search. Writes the
    files listed in the module docstring and returns them as a `SearchResult`.

    Trials train under `config.strategy`, as `kcap train` does (`batch_size` is
    the global batch). Under `multi-worker` every worker runs this same search:
    with the same seed the workers draw the same trials and train each one
    together. Only the chief writes `directory`; the others work in a temporary
    copy of it (so a resumed search resumes everywhere), removed at the end
    (their result's `tuner` has no files left). As for the feature cache,
    `directory` must be on a file system all workers see.

    Example:

    ```python
    config = TrainConfig(data="synthetic", epochs=2, cache_features=True)
    result = search(config, "tune", max_trials=4)
    print(format_summary(result.summary))
    best_model = result.tuner.get_best_models(1)[0]
    ```
    """
    config = config.resolved()
    strategy = make_strategy(config.strategy)  # before any other TF op (multi-worker needs that)
    space = validate_search_space(search_space) if isinstance(search_space, dict) else load_search_space(search_space)
    search_dir = SearchDir(directory)
    if search_dir.path.exists() and not search_dir.path.is_dir():
        raise NotADirectoryError(f"--directory {directory} is a file; give the folder for the search (new, or one to resume).")
    settings = {
        "kcap_version": kcap.__version__,
        "settings": config.to_json(),
        "tuner": tuner,
        "objective": objective,
        "search_space": space,
        "max_trials": max_trials,
    }
    # Before any data is read, and before tuning.json fixes the settings of the search.
    check_tuner_arguments(tuner, objective, max_trials, config.epochs)
    _check_settings(search_dir, settings)
    # The others copy the search, so that they resume it as the chief does.
    with writable_directory(search_dir.path, strategy, copy_existing=True) as write_path:
        barrier(strategy)  # every copy made before the chief changes anything
        write_path.mkdir(parents=True, exist_ok=True)
        with exclusive_use(write_path, "kcap tune (two searches would write the same trials)"):
            result = _search(
                config, SearchDir(write_path), strategy, settings, space, tuner, max_trials, objective, verbose,
                chief_directory=search_dir.path,
            )
        barrier(strategy)  # the chief's summary written before the others read it (--retrain-best)
    # On the other workers: the same search as the chief's, whose files are the ones that stay.
    return dataclasses.replace(result, search_dir=search_dir)


def _search(
    config: TrainConfig, search_dir: SearchDir, strategy: tf.distribute.Strategy, settings: dict, space: dict,
    tuner: str, max_trials: int, objective: str, verbose: int | str, chief_directory: Path | None = None,
) -> SearchResult:
    """The search itself, writing into `search_dir` (a copy of the chief's `chief_directory` on another worker)."""
    data = prepare_tuning_data(config, progress=verbose not in (0, "0"), build_cache=is_chief(strategy))
    hypermodel = CaptionerHyperModel(config, data, space, objective=objective)
    kt = make_tuner(tuner, hypermodel, search_dir.path, objective, max_trials, config.epochs, config.seed,
                    distribution_strategy=strategy, chief_directory=chief_directory)
    atomic_write_json(search_dir.settings, settings)
    _write_hparams_config(kt, search_dir, objective)
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(search_dir.logs))]
    if config.early_stopping:
        # Per trial (keras-tuner copies the callbacks for each): stop once the objective stalls.
        callbacks.append(keras.callbacks.EarlyStopping(
            objective, mode=OBJECTIVES[objective], patience=config.early_stopping
        ))
    with one_decoder_per_trial(), warnings.catch_warnings():
        # keras-tuner's nanmin over a diverged trial's NaN scores; the trial is reported FAILED.
        warnings.filterwarnings("ignore", r"All-NaN (axis|slice) encountered", RuntimeWarning)
        kt.search(epochs=config.epochs, callbacks=callbacks, verbose=verbose)
    summary = write_summary(kt, search_dir)
    failed = [r for r in summary["trials"] if r["status"] in ("FAILED", "INVALID")]
    if failed and summary["best"] is None:
        message = kt.oracle.trials[failed[-1]["trial_id"]].message or ""
        raise RuntimeError(f"Every trial failed; the last one with:\n{message.strip()}")
    best = json.loads(search_dir.best_hyperparameters.read_text()) if summary["best"] else None
    return SearchResult(kt, summary, best, search_dir)


@contextlib.contextmanager
def one_decoder_per_trial() -> Iterator[None]:
    """Leaves out TensorFlow's "triggered tf.function retracing" warning for the captioning function.

    Every trial builds a new `Captioner`, whose decoding function is traced for
    the validation captions (the `val_bleu4` objective). TensorFlow counts
    those traces across models and warns of a function made in a loop: true,
    one per trial, as it must be, and nothing its reader could act on.
    """

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "Captioner._decode_function" in message)

    logger = logging.getLogger("tensorflow")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _write_hparams_config(tuner: keras_tuner.Tuner, search_dir: SearchDir, objective: str) -> None:
    """The HParams dashboard's experiment: the searched ranges and the metrics to show per trial."""
    from tensorboard.plugins.hparams import api as hparams_api

    hparams = compat.hparams_of_space(tuner.oracle.get_space(), hparams_api)
    metric = objective.removeprefix("val_")
    metrics = [
        hparams_api.Metric(f"epoch_{metric}", group="validation", display_name=objective),
        hparams_api.Metric("epoch_loss", group="train", display_name="loss"),
    ]
    writer = tf.summary.create_file_writer(str(search_dir.logs))
    with writer.as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()


def retrain_best(
    config: TrainConfig, directory: str | Path, run_dir: str | Path, verbose: int | str = "auto"
) -> dict:
    """Trains `run_dir` with `config` and the search's best hyperparameters; returns its history.

    Example:

    ```python
    retrain_best(TrainConfig(data="synthetic", epochs=10), "tune", "runs/best")
    ```
    """
    from kcap.training.trainer import train

    path = SearchDir(directory).best_hyperparameters
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: no trial of the search in {directory} has completed.")
    return train(apply_hparams(config, path), run_dir, verbose=verbose)
