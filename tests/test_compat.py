"""Each workaround in `kcap.compat` still works, and is still needed.

A test named `..._still_needed` reproduces the upstream bug or gap without
the workaround; when it fails, upstream fixed it and its message says which
compat name to remove. The other tests run the workaround for real against
the installed Keras / TensorFlow / keras-tuner / pycocoevalcap.
"""

import inspect
import json
import subprocess
import threading
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
from pycocoevalcap.meteor.meteor import Meteor

from kcap import compat

# -- Keras and TensorFlow ---------------------------------------------------------------------


class BuiltInInit(keras.Model):
    """A model built in its constructor that takes dict inputs, as the Captioner does."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.dense.build((None, 3))
        self.symbolic_builds = 0

    def call(self, inputs):
        return self.dense(inputs["x"])

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        self.symbolic_builds += 1
        compat.build_optimizer_only(self)


def test_build_optimizer_only_is_what_fit_calls_under_a_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = BuiltInInit()
        model.compile(keras.optimizers.SGD(0.1), "mse")
    data = tf.data.Dataset.from_tensor_slices(({"x": np.ones((4, 3), "float32")}, np.ones((4, 1), "float32")))
    model.fit(data.batch(2), epochs=1, verbose=0)
    assert model.symbolic_builds == 1, "Keras no longer calls Model._maybe_symbolic_build: revisit kcap.compat.build_optimizer_only"
    assert model.optimizer.built and int(model.optimizer.iterations.numpy()) == 2


def test_build_optimizer_only_still_needed():
    # keras-team/keras#20329 fails only in a cluster of several workers (tests/training/test_distribute.py
    # trains one); here: Keras' own symbolic build still reduces the first batch across replicas.
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    source = inspect.getsource(TensorFlowTrainer._maybe_symbolic_build)
    assert "distribute_strategy.reduce" in source, (
        "upstream fixed: remove kcap.compat.build_optimizer_only (Keras no longer reduces the first "
        "batch across replicas; keras-team/keras#20329) and the Captioner's _maybe_symbolic_build"
    )


def test_in_multi_worker_mode_asks_the_private_method():
    from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended

    assert callable(getattr(CollectiveAllReduceExtended, "_in_multi_worker_mode", None)), (
        "TensorFlow's MultiWorkerMirroredStrategy lost extended._in_multi_worker_mode(): update kcap.compat.in_multi_worker_mode"
    )
    assert not compat.in_multi_worker_mode(tf.distribute.get_strategy())
    assert not compat.in_multi_worker_mode(tf.distribute.MirroredStrategy(["/cpu:0"]))


def test_multi_worker_step_outputs_leaves_scalars_alone_outside_a_cluster():
    loss = tf.constant(1.5)
    assert compat.multi_worker_step_outputs({"loss": loss})["loss"].shape == ()


def test_multi_worker_step_outputs_still_needed():
    # What Keras 3 does with step outputs in multi-worker mode, on a one-device strategy.
    from keras.src.backend.tensorflow.trainer import _multi_worker_concat

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert _multi_worker_concat(strategy.run(lambda: tf.constant([1.5])), strategy).numpy().tolist() == [1.5]
    try:
        _multi_worker_concat(strategy.run(lambda: tf.constant(1.5)), strategy)
    except (tf.errors.InvalidArgumentError, ValueError):
        return
    pytest.fail("upstream fixed: remove kcap.compat.multi_worker_step_outputs (Keras reduces scalar "
                "step outputs across workers; tensorflow/tensorflow#72388)")


def test_set_dtype_policy_everywhere_reaches_nested_layers():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="mixed_float16")])
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="mixed_float16")(inner(inputs)))

    def every_layer(layer):
        yield layer
        for child in getattr(layer, "layers", []):
            yield from every_layer(child)

    assert "mixed_float16" in {layer.dtype_policy.name for layer in every_layer(model)}
    compat.set_dtype_policy_everywhere(model, "float32")
    assert {layer.dtype_policy.name for layer in every_layer(model)} == {"float32"}


def _archive_with_an_endpoint() -> keras.export.ExportArchive:
    archive = keras.export.ExportArchive()
    scale = tf.Variable(2.0)
    archive.add_endpoint("serve", tf.function(lambda x: x * scale), input_signature=[tf.TensorSpec([None], tf.float32)])
    return archive


def test_attach_assets_writes_them_into_the_savedmodel(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    archive = _archive_with_an_endpoint()
    compat.attach_assets(archive, "kcap_assets", {"vocab": tf.saved_model.Asset(str(tmp_path / "vocab.txt"))})
    archive.write_out(str(tmp_path / "export"), verbose=False)
    assert (tmp_path / "export" / "assets" / "vocab.txt").read_text() == "a\nb\n"
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    assert Path(loaded.kcap_assets["vocab"].asset_path.numpy().decode()).parent == tmp_path / "export" / "assets"


def test_attach_assets_still_needed(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\n")
    holder = tf.Module()
    holder.vocab = tf.saved_model.Asset(str(tmp_path / "vocab.txt"))
    archive = _archive_with_an_endpoint()
    archive.track(holder)
    archive.write_out(str(tmp_path / "export"), verbose=False)
    assert not (tmp_path / "export" / "assets" / "vocab.txt").exists(), (
        "upstream fixed: remove kcap.compat.attach_assets (ExportArchive.track now saves Assets)"
    )


# -- keras-tuner ----------------------------------------------------------------------------


class _HookedOracle(keras_tuner.oracles.RandomSearchOracle):
    def _save_trial(self, trial):
        self.saved_trials = getattr(self, "saved_trials", 0) + 1
        Path(compat.trial_file(self, trial.trial_id)).write_text(json.dumps(trial.get_state()))


class _HookedTuner(keras_tuner.Tuner):
    def _get_tensorboard_dir(self, logdir, trial_id, execution):
        self.tensorboard_dirs = [*getattr(self, "tensorboard_dirs", []), (trial_id, execution)]
        return compat.default_tensorboard_dir(self, logdir, trial_id, execution)

    def _build_hypermodel(self, hp):
        self.builds = getattr(self, "builds", 0) + 1
        return compat.build_trial_model(self, hp)


def _build(hp):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(hp.Choice("units", [1, 2]))])
    model.compile("sgd", "mse")
    return model


def test_keras_tuner_hooks_and_files_are_where_compat_says(tmp_path):
    oracle = _HookedOracle(objective="val_loss", max_trials=1, seed=compat.oracle_seed(0))
    tuner = _HookedTuner(oracle, _build, directory=str(tmp_path), project_name="p")
    x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
    tuner.search(x, y, validation_data=(x, y), epochs=1, verbose=0,
                 callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "logs"))])
    trial = oracle.trials[oracle.end_order[0]]
    message = "keras-tuner no longer calls its private hook {}: update kcap.compat"
    assert getattr(oracle, "saved_trials", 0) > 0, message.format("Oracle._save_trial")
    assert getattr(tuner, "builds", 0) == 1, message.format("Tuner._build_hypermodel")
    assert tuner.tensorboard_dirs == [(trial.trial_id, 0)], message.format("Tuner._get_tensorboard_dir")
    assert (tmp_path / "logs" / trial.trial_id / "execution0").is_dir()
    assert json.loads(Path(compat.trial_file(oracle, trial.trial_id)).read_text())["status"] == "COMPLETED"
    assert json.loads(Path(compat.oracle_file(oracle)).read_text())["end_order"] == [trial.trial_id]
    assert Path(compat.tuner_file(tuner)).is_file()
    assert Path(compat.checkpoint_file(tuner, trial.trial_id)).is_file()
    assert not compat.tuner_is_worker(tuner)
    from tensorboard.plugins.hparams import api as hparams_api

    assert [h.name for h in compat.hparams_of_space(oracle.get_space(), hparams_api)] == ["units"]
    assert oracle.seed == compat.oracle_seed(0)


def _oracle(directory, **kwargs):
    oracle = keras_tuner.oracles.RandomSearchOracle(objective="loss", max_trials=5, seed=1, **kwargs)
    oracle.hyperparameters.Choice("units", [1, 2, 3, 4])
    oracle._set_project_dir(str(directory), "p")
    return oracle


def test_forget_finished_retries_still_needed_and_works(tmp_path):
    # Killed between writing a finished trial's trial.json and oracle.json.
    oracle = _oracle(tmp_path)
    trial = oracle.create_trial("tuner0")
    oracle.save()
    trial.status, trial.score = "COMPLETED", 0.5
    Path(compat.trial_file(oracle, trial.trial_id)).write_text(json.dumps(trial.get_state()))
    reloaded = _oracle(tmp_path)
    reloaded.reload()
    assert trial.trial_id in reloaded._retry_queue, (
        "upstream fixed: remove kcap.compat.forget_finished_retries (keras-tuner no longer retries a "
        "trial whose trial.json says COMPLETED)"
    )
    compat.forget_finished_retries(reloaded)
    assert reloaded._retry_queue == [] and reloaded.end_order == [trial.trial_id]


def test_atomic_trial_files_still_needed():
    from keras_tuner.src import utils

    source = inspect.getsource(utils.save_json)
    assert 'File(path, "w")' in source and "replace" not in source, (
        "upstream fixed: keras-tuner writes its state files atomically; kcap's atomic oracle/tuner "
        "saving (tuning.search) and kcap.compat.trial_file may go"
    )


def test_build_trial_model_still_needed():
    source = inspect.getsource(keras_tuner.Hyperband._build_hypermodel)
    assert "build_from_config" in source, (
        "upstream fixed: remove kcap.compat.build_trial_model (Hyperband no longer builds a built model again)"
    )


def test_oracle_seed_still_needed():
    assert keras_tuner.oracles.RandomSearchOracle(objective="loss", max_trials=1, seed=0).seed != 0, (
        "upstream fixed: keras-tuner keeps a seed of 0; kcap.compat.oracle_seed may go "
        "(it still spreads seeds 1 apart)"
    )


def test_limit_trials_still_needed_and_works(tmp_path):
    assert "max_trials" not in inspect.signature(keras_tuner.oracles.HyperbandOracle).parameters, (
        "upstream fixed: remove kcap.compat.limit_trials (HyperbandOracle takes max_trials)"
    )
    oracle = _oracle(tmp_path)
    compat.limit_trials(oracle, 1)
    first = oracle.create_trial("tuner0")
    oracle.end_trial(first)
    assert oracle.create_trial("tuner0").status == "STOPPED"


def test_linear_float_grid_still_needed():
    hp = keras_tuner.HyperParameters()
    hp.Float("dropout", 0.0, 0.5, step=0.1)
    values = list(hp.space[0].values)
    assert max(values) < 0.5, (
        "upstream fixed: remove kcap.compat.linear_float_grid (keras-tuner's stepped Float reaches "
        "its max; keras-team/keras-tuner#1001); keep kcap.compat.without_binary_noise for old searches"
    )
    assert compat.linear_float_grid(0.0, 0.5, 0.1)[-1] == 0.5


# -- pycocoevalcap's METEOR -----------------------------------------------------------------


def _meteor_talking_to(command) -> Meteor:
    """A pycocoevalcap `Meteor` whose "Java process" is `command` (no Java needed)."""
    meteor = Meteor.__new__(Meteor)
    meteor.meteor_p = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    meteor.lock = threading.Lock()
    return meteor


GTS, RES = {0: ["a red circle"]}, {0: ["a circle"]}


def test_meteor_lock_release_still_needed():
    meteor = _meteor_talking_to(["cat"])  # echoes the request back, which is not a score
    with pytest.raises(ValueError):
        meteor.compute_score(GTS, RES)
    held = meteor.lock.locked()
    if held:
        meteor.lock.release()
    compat.stop_meteor(meteor)
    assert held, "upstream fixed: compute_score releases its lock on errors; drop that part of kcap.compat.meteor_score"


def test_meteor_score_names_a_failure_and_releases_the_lock():
    meteor = _meteor_talking_to(["cat"])
    with pytest.raises(compat.MeteorProcessError, match=r"METEOR's Java process failed \(ValueError"):
        compat.meteor_score(meteor, GTS, RES, timeout=60)
    assert not meteor.lock.locked()
    compat.stop_meteor(meteor)


def test_meteor_score_kills_a_process_that_does_not_answer():
    meteor = _meteor_talking_to(["sleep", "60"])
    with pytest.raises(compat.MeteorProcessError, match=r"did not answer within 0.5 s"):
        compat.meteor_score(meteor, GTS, RES, timeout=0.5)
    compat.stop_meteor(meteor)
    assert meteor.meteor_p.stdin.closed and meteor.meteor_p.returncode is not None


# The real jar through kcap.compat.meteor_score: tests/evaluation/test_metrics.py::test_meteor_equals_pycocoevalcaps_meteor.
