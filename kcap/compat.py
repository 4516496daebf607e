"""Workarounds for private or buggy APIs of Keras, TensorFlow, keras-tuner and pycocoevalcap.

Every use of another library's private name (`_name`, `.src.` modules) or of
behaviour kcap has to work around lives here, and nowhere else: the rest of
kcap calls these functions. Each names the upstream issue (or says that none
is filed and what the upstream code does) and has a test in
`tests/test_compat.py` that fails when the workaround stops working (the
private API changed) or stops being needed (upstream fixed the bug: the test
says which name to remove). `setup.cfg` caps the versions these were tested
with, so a new release is taken only after `tests/test_compat.py` passes on it.

This is kcap's bottom layer: it imports no other kcap module.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

# -- Keras and TensorFlow ---------------------------------------------------------------------


def build_optimizer_only(model: keras.Model) -> None:
    """Builds `model`'s optimizer; the body of a `_maybe_symbolic_build` override.

    Keras' TensorFlow trainer calls `Model._maybe_symbolic_build` at the start
    of `fit` under a `tf.distribute` strategy: it reduces the first batch
    across replicas (`strategy.reduce("MEAN", batch, axis=None)`), which
    fails for dict inputs under `MultiWorkerMirroredStrategy`
    (keras-team/keras#20329), only to build unbuilt layers. A model that
    builds every layer in its constructor overrides the private method with
    a one-line call to this, so only the optimizer is left to build.

    Example:

    ```python
    class Captioner(keras.Model):
        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            kcap.compat.build_optimizer_only(self)
    ```
    """
    if model.optimizer is not None and not model.optimizer.built:
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` over more than one worker.

    TensorFlow has no public way to ask: a `MultiWorkerMirroredStrategy` made
    without `TF_CONFIG` (or with a cluster of one worker) runs locally, and
    only the private `strategy.extended._in_multi_worker_mode()` tells the two
    apart (no upstream issue found asking for a public one).

    >>> in_multi_worker_mode(tf.distribute.get_strategy())
    False
    """
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def multi_worker_step_outputs(results: Mapping[str, Any]) -> dict[str, Any]:
    """A train/test step's scalar results in the shape Keras can reduce across workers.

    Keras 3 reduces step outputs across the workers of a
    `MultiWorkerMirroredStrategy` by concatenating them along `axis=0`, which
    fails on scalars (tensorflow/tensorflow#72388). The values are already
    synchronised, so a shape-(1,) copy reduces to the same number. Only in
    multi-worker mode (`in_multi_worker_mode`): a cluster of one worker is
    not, Keras passes the (1,) copy on there, and TensorBoard refuses it.

    >>> multi_worker_step_outputs({"loss": 1.5})
    {'loss': 1.5}
    """
    if in_multi_worker_mode(tf.distribute.get_strategy()):
        return {name: keras.ops.reshape(value, (1,)) for name, value in results.items()}
    return dict(results)


def set_dtype_policy_everywhere(model: keras.Layer, policy: str) -> None:
    """Sets `policy` on `model` and every layer nested in it, at any depth.

    A model loaded from a mixed-precision run's `.keras` file brings the mixed
    policy back on the layers whose configs recorded it. Keras 3 has no public
    way to reach every nested layer (`Model.layers` lists direct children
    only; the private `Layer._flatten_layers` walks them all); no upstream
    issue asks for one.

    Example:

    ```python
    model = keras.saving.load_model("runs/mixed/best.keras")
    set_dtype_policy_everywhere(model, "float32")
    ```
    """
    for layer in model._flatten_layers(include_self=True, recursive=True):
        layer.dtype_policy = policy


def attach_assets(archive: keras.export.ExportArchive, name: str, assets: Mapping[str, tf.saved_model.Asset]) -> None:
    """Makes `archive.write_out` copy `assets` into the SavedModel's `assets/` folder.

    `ExportArchive.track()` keeps only variables and TensorFlow resources
    (lookup tables) of what it tracks; an `Asset` must hang off the object
    the archive saves, its private root trackable `archive._tf_trackable`,
    to be written and restored. No upstream issue asks `ExportArchive` to
    take assets.

    Example:

    ```python
    attach_assets(archive, "kcap_assets", {"vocab": tf.saved_model.Asset("runs/shapes/vocab.json")})
    archive.write_out("exported/shapes")
    ```
    """
    root = getattr(archive, "_tf_trackable", None)
    if root is None:
        raise RuntimeError(
            f"keras {keras.__version__}: ExportArchive has no root trackable to attach "
            "assets to; kcap.compat.attach_assets needs updating for this Keras version."
        )
    setattr(root, name, assets)


# -- keras-tuner ----------------------------------------------------------------------------
# keras-tuner documents no way to write its state files elsewhere or otherwise: kcap
# overrides the private hooks `Oracle._save_trial`, `Tuner._get_tensorboard_dir` and
# `Tuner._build_hypermodel`, and reads the paths below, all private in keras-tuner 1.4.


def oracle_file(oracle) -> str:
    """The path of `oracle.json`, the oracle's state (private `Oracle._get_oracle_fname`)."""
    return oracle._get_oracle_fname()


def trial_file(oracle, trial_id: str) -> str:
    """The path of a trial's `trial.json` (private `Oracle._get_trial_dir`).

    keras-tuner writes it in `Oracle._save_trial(trial)`, a private hook kcap
    overrides to write it atomically: keras-tuner's `save_json` opens the file
    for writing and writes into it, so a process killed mid-write leaves a
    truncated file the next run cannot read (no upstream issue filed).
    """
    return os.path.join(oracle._get_trial_dir(trial_id), "trial.json")


def forget_finished_retries(oracle) -> None:
    """Drops from the oracle's retry queue the trials whose `trial.json` says COMPLETED.

    `Oracle.reload()` puts every trial `oracle.json` lists as running into the
    private `_retry_queue`. A process killed between writing a finished
    trial's `trial.json` and `oracle.json` leaves the trial listed as running,
    and keras-tuner would run it again (no upstream issue filed). Call it
    after `Oracle.reload()`.
    """
    for trial_id in list(oracle._retry_queue):
        trial = oracle.trials[trial_id]
        if trial.status == "COMPLETED" and trial.score is not None:
            oracle._retry_queue.remove(trial_id)
            if trial_id not in oracle.end_order:
                oracle.end_order.append(trial_id)


def tuner_file(tuner) -> str:
    """The path of the tuner's state file (private `BaseTuner._get_tuner_fname`).

    keras-tuner reloads a search only when this file exists, and writes it
    only after a trial: a search killed in its first trial would start over
    unless the file is written at once.
    """
    return tuner._get_tuner_fname()


def tuner_is_worker(tuner) -> bool:
    """Whether `tuner` is a worker of keras-tuner's own distributed tuning (private `_is_worker`)."""
    return tuner._is_worker()


def checkpoint_file(tuner, trial_id: str) -> str:
    """Where `tuner` saves a trial's best weights (private `Tuner._get_checkpoint_fname`)."""
    return tuner._get_checkpoint_fname(trial_id)


def default_tensorboard_dir(tuner, logdir: str, trial_id: str, execution: int) -> str:
    """keras-tuner's own TensorBoard folder of a trial's execution: `logdir/<trial_id>/execution<n>`.

    For an override of the private hook `Tuner._get_tensorboard_dir`, which
    calls this where it keeps keras-tuner's layout.
    """
    import keras_tuner

    return keras_tuner.Tuner._get_tensorboard_dir(tuner, logdir, trial_id, execution)


def build_trial_model(tuner, hp) -> keras.Model:
    """`Tuner`'s own model building (in the tuner's strategy scope, compile overrides applied).

    `Hyperband._build_hypermodel` (private) calls `model.build_from_config()`
    on the freshly built model before loading the earlier round's weights; a
    model built in its constructor fails to build twice. A Hyperband subclass
    overrides `_build_hypermodel` with this plus its own weight loading
    (no upstream issue filed).
    """
    import keras_tuner

    return keras_tuner.Tuner._build_hypermodel(tuner, hp)


def hparams_of_space(space, hparams_api) -> list:
    """TensorBoard HParams of keras-tuner hyperparameters (private `tuner_utils.convert_hyperparams_to_hparams`).

    keras-tuner writes the HParams dashboard's experiment only with its own
    TensorBoard wrapper; kcap writes it once per search (no upstream issue asks
    to make the conversion public).
    """
    from keras_tuner.src.engine import tuner_utils

    return list(tuner_utils.convert_hyperparams_to_hparams(space, hparams_api))


def oracle_seed(seed: int) -> int:
    """The seed to give a keras-tuner oracle for a run's `seed`, distinct for every `seed`.

    keras-tuner's `Oracle` reads a seed of 0 as "none" (`seed or
    random.randint(1, 10000)`) and draws one at random; and it seeds its n-th
    draw with `seed + n`, so seeds 1 apart would draw the same values one
    slot apart (no upstream issue filed).

    >>> oracle_seed(0), oracle_seed(1)
    (1, 1000004)
    """
    return 1 + seed * 1_000_003


def limit_trials(oracle, max_trials: int) -> None:
    """Caps the number of trials of an oracle that takes no `max_trials` (`HyperbandOracle`).

    `HyperbandOracle.__init__` has no `max_trials` argument, while
    `Oracle.create_trial` stops the search once `oracle.max_trials` trials
    exist (no upstream issue filed).
    """
    oracle.max_trials = max_trials


MAX_FLOAT_GRID = 1000


def linear_float_grid(low: float, high: float, step: float | None, sampling: str = "linear") -> list[float] | None:
    """The values of a linear float range with a step, `high` included when a whole number of steps away.

    keras-tuner's own stepped `Float` counts steps with floor division, in which
    0.5 // 0.1 == 4.0: it never draws max, and the Bayesian oracle maps a drawn
    0.3 back to 0.2's slot (keras-team/keras-tuner#1001). The values as an
    ordered `Choice` are drawn and mapped back exactly. `None` for a range
    with no step, another sampling, or more than `MAX_FLOAT_GRID` values.

    >>> linear_float_grid(0.0, 0.5, 0.1)
    [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    """
    if not step or sampling != "linear":
        return None
    count = math.floor((high - low) / step + 1e-9) + 1
    if count > MAX_FLOAT_GRID:
        return None
    # Rounding never takes a value past the bounds the user wrote.
    return [min(max(without_binary_noise(low + i * step), low), high) for i in range(count)]


def without_binary_noise(value: float) -> float:
    """`value` to 15 significant digits: what steps add up to in binary goes, any number JSON can write stays.

    A search begun before kcap's float steps were choices (`linear_float_grid`)
    gets `0.1 * 3` back from keras-tuner's stepped `Float`.

    >>> 0.1 * 3, without_binary_noise(0.1 * 3), without_binary_noise(0.9999999999999)
    (0.30000000000000004, 0.3, 0.9999999999999)
    """
    return float(f"{value:.15g}")


# -- pycocoevalcap's METEOR -----------------------------------------------------------------


class MeteorProcessError(RuntimeError):
    """pycocoevalcap's METEOR Java process failed or did not answer in time; the message says which."""


def meteor_score(meteor, gts: dict, res: dict, timeout: float) -> float:
    """Corpus METEOR from a `pycocoevalcap.meteor.meteor.Meteor`, killing its Java process after `timeout` s.

    `Meteor.compute_score` reads the jar's answers line by line with no
    timeout, so a stalled Java process hangs the caller forever (reports in
    salaniz/pycocoevalcap#11); killing the process turns the blocking read into
    an error. And an exception inside `compute_score` leaves its private
    `Meteor.lock` held, so `Meteor.__del__` (which acquires it) would wait
    forever; it is released here (no upstream issue filed). Raises
    `MeteorProcessError` (the process is killed then) with its error output.
    """
    process = meteor.meteor_p
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        process.kill()

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        return float(meteor.compute_score(gts, res)[0])
    except (OSError, ValueError) as error:
        watchdog.cancel()
        reason = f"did not answer within {timeout:g} s" if timed_out.is_set() else f"failed ({error!r})"
        raise MeteorProcessError(f"METEOR's Java process {reason}.{_read_stderr(process)}") from None
    finally:
        watchdog.cancel()
        if meteor.lock.locked():
            meteor.lock.release()


def stop_meteor(meteor) -> None:
    """Stops a `Meteor`'s Java process and closes its pipes (pycocoevalcap stops it only in `__del__`)."""
    process = meteor.meteor_p
    if process.poll() is None:
        process.kill()
    process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        try:
            pipe.close()
        except OSError:  # a broken pipe to a dead process has nothing left to say
            pass


def _read_stderr(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.kill()
    try:
        text = process.stderr.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""
    return f" Its error output: {text[-500:]}" if text else ""
