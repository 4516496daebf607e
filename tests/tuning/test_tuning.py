"""`kcap tune`: a keras-tuner search over the captioner that resumes and hands back its best settings."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY, kcap_command

from kcap.training.config import TrainConfig

# Two settings, six combinations: four random trials never run out of new ones.
SPACE = {
    "embedding_dim": {"type": "choice", "values": [8, 16, 24]},
    "units": {"type": "choice", "values": [16, 32]},
}


def _tiny(cache_dir, **overrides) -> TrainConfig:
    """The tiny synthetic set, 1 epoch per trial, a frozen backbone whose features are cached, and no
    per-epoch captioning of the validation images (the tests that score val_bleu4 ask for it)."""
    settings = {**TINY, "epochs": 1, "train_backbone": False, "cache_features": True, "cache_dir": str(cache_dir),
                "val_captions": 0}
    return TrainConfig(data="synthetic", **{**settings, **overrides})


def _flags(config: TrainConfig) -> list[str]:
    """`kcap train`/`kcap tune` flags for a `_tiny` config."""
    return [
        "--data", "synthetic", "--synthetic-images", str(config.synthetic_images),
        "--synthetic-image-size", str(config.synthetic_image_size), "--epochs", str(config.epochs),
        "--batch-size", str(config.batch_size), "--embedding-dim", str(config.embedding_dim),
        "--units", str(config.units), "--learning-rate", str(config.learning_rate), "--dropout", str(config.dropout),
        "--no-train-backbone", "--cache-features", "--cache-dir", config.cache_dir,
        "--val-captions", str(config.val_captions), "--verbose", "0",
    ]


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory, space_file):
    """A finished random search of four trials (in this process, so its tuner can be asked for models)."""
    from tuning.search import search

    root = tmp_path_factory.mktemp("search")
    config = _tiny(root / "features")
    result = search(config, root / "tune", tuner="random", max_trials=4, search_space=space_file, verbose=0)
    return config, result


# -- the search -------------------------------------------------------------------


@pytest.mark.slow
def test_search_summary_lists_every_trial_once(searched):
    from tuning.search import format_summary

    _, result = searched
    directory = result.search_dir.path
    summary = json.loads((directory / "summary.json").read_text())
    assert summary == result.summary
    rows = summary["trials"]
    assert [r["trial_id"] for r in rows] == ["0", "1", "2", "3"]
    combos = {(r["hyperparameters"]["embedding_dim"], r["hyperparameters"]["units"]) for r in rows}
    assert len(combos) == 4  # random search does not repeat a combination
    for row in rows:
        assert row["status"] == "COMPLETED"
        assert set(row["hyperparameters"]) == {"embedding_dim", "units"}
        assert row["hyperparameters"]["embedding_dim"] in (8, 16, 24) and row["hyperparameters"]["units"] in (16, 32)
        assert math.isfinite(row["objective"]) and row["objective"] > 0
        assert row["epochs"] == 1 and row["seconds"] > 0

    best = min(rows, key=lambda r: r["objective"])
    assert summary["best"]["trial_id"] == best["trial_id"]
    assert json.loads((directory / "best_hyperparameters.json").read_text()) == best["hyperparameters"]
    table = format_summary(summary).splitlines()
    assert len(table) == 5 and table[0].split()[:2] == ["trial", "status"]
    assert any(line.startswith(f"{best['trial_id']}*") for line in table[1:])


@pytest.mark.slow
def test_each_trial_has_tensorboard_logs_with_its_hyperparameters(searched):
    _, result = searched
    logs = result.search_dir.logs
    for trial_id in ("0", "1", "2", "3"):
        assert list((logs / trial_id / "validation").glob("events.out.tfevents.*")), trial_id
        # The HParams dashboard reads a session summary beside the train/validation runs.
        events = b"".join(p.read_bytes() for p in (logs / trial_id).glob("events.out.tfevents.*"))
        assert b"_hparams_/session_start_info" in events and b"embedding_dim" in events
    experiment = b"".join(p.read_bytes() for p in logs.glob("events.out.tfevents.*"))
    assert b"_hparams_/experiment" in experiment


@pytest.mark.slow
def test_best_model_from_keras_tuner_has_the_best_trials_weights(searched):
    from kcap.training.assembly import fit_arguments

    _, result = searched
    model = result.tuner.get_best_models(1)[0]
    best = result.summary["best"]
    assert (model.embedding_dim, model.units) == (best["hyperparameters"]["embedding_dim"], best["hyperparameters"]["units"])
    data = result.tuner.hypermodel.data
    config = result.tuner.hypermodel.config
    arguments = fit_arguments(config, data)  # what each trial trained and was scored on
    # Its validation loss is the one the trial reported: the trained weights, not fresh ones.
    loss = model.evaluate(arguments["validation_data"], verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(best["objective"], rel=1e-4)
    # The optimizer state came back too: one epoch's steps.
    assert int(model.optimizer.iterations.numpy()) == arguments["steps_per_epoch"]


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused(searched):
    from tuning.search import search

    config, result = searched
    other = {**SPACE, "units": {"type": "choice", "values": [16, 64]}}
    with pytest.raises(ValueError, match="search_space"):
        search(config, result.search_dir.path, max_trials=4, search_space=other)
    with pytest.raises(ValueError, match="learning_rate: 0.003 → 0.01"):
        search(TrainConfig(**{**config.to_json(), "learning_rate": 0.01}), result.search_dir.path,
               max_trials=4, search_space=SPACE)
    # What only the --retrain-best run uses may change: the search resumes (here: is already done).
    retrain_only = TrainConfig(**{**config.to_json(), "monitor": "val_bleu4", "val_captions": 4})
    resumed = search(retrain_only, result.search_dir.path, max_trials=4, search_space=SPACE, verbose=0)
    assert resumed.summary["trials"] == result.summary["trials"]


@pytest.mark.slow
def test_search_by_validation_bleu4_keeps_the_highest(tmp_path):
    from tuning.search import search

    result = search(_tiny(tmp_path / "features"), tmp_path / "tune", max_trials=2, objective="val_bleu4",
                    search_space=SPACE, verbose=0)
    summary = result.summary
    assert summary["objective"] == {"name": "val_bleu4", "direction": "max"}
    scores = [r["objective"] for r in summary["trials"]]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert summary["best"]["objective"] == max(scores)


@pytest.mark.slow
def test_early_stopping_stops_each_trial_once_its_objective_stalls(tmp_path):
    from tuning.search import search

    # A learning rate high enough that validation loss stalls within five epochs (0.1 no longer
    # did with Keras 3.15: the loss kept falling slowly to the fifth).
    config = _tiny(tmp_path / "features", epochs=5, learning_rate=1.0, early_stopping=1)
    trials = search(config, tmp_path / "tune", max_trials=2, search_space={"units": SPACE["units"]},
                    verbose=0).summary["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED"] * 2
    for trial in trials:
        if trial["epochs"] < 5:  # stopped: one epoch (the patience) after its best
            assert trial["best_epoch"] == trial["epochs"] - 1
        else:
            assert trial["best_epoch"] >= 4
    assert any(t["epochs"] < 5 for t in trials)


def test_a_diverged_trial_is_failed_with_a_null_objective_in_a_summary_strict_json_reads(tmp_path):
    import warnings

    from tuning.search import search

    space = {"learning_rate": {"type": "choice", "values": [1e30, 0.001]}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = search(_tiny(tmp_path / "features"), tmp_path / "tune", max_trials=2, search_space=space, verbose=0)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    summary = json.loads((tmp_path / "tune" / "summary.json").read_text(), parse_constant=refuse)
    by_rate = {t["hyperparameters"]["learning_rate"]: t for t in summary["trials"]}
    assert (by_rate[1e30]["status"], by_rate[1e30]["objective"]) == ("FAILED", None)
    assert by_rate[0.001]["status"] == "COMPLETED" and summary["best"]["hyperparameters"] == {"learning_rate": 0.001}
    assert result.best_hyperparameters == {"learning_rate": 0.001}
    assert not [w for w in caught if "All-NaN" in str(w.message)]


@pytest.mark.slow
def test_hyperband_continues_a_trial_from_its_earlier_round(tmp_path):
    from tuning.search import search

    # max_epochs 3, factor 3: three 1-epoch trials, then the best one trained on to epoch 3.
    result = search(_tiny(tmp_path / "features", epochs=3), tmp_path / "tune", tuner="hyperband", max_trials=4,
                    search_space=SPACE, verbose=0)
    rows = result.summary["trials"]
    assert [r["status"] for r in rows] == ["COMPLETED"] * 4
    assert [r["epochs"] for r in rows] == [1, 1, 1, 2]
    assert [r["best_epoch"] for r in rows] == [1, 1, 1, 3]  # the continued trial's epochs are 2 and 3
    last = result.tuner.oracle.trials[rows[3]["trial_id"]].hyperparameters.values
    earlier = next(r for r in rows if r["trial_id"] == last["tuner/trial_id"])
    assert rows[3]["hyperparameters"] == earlier["hyperparameters"]
    # Its first step loaded the earlier round's checkpoint into a fresh Captioner (which used to fail);
    # two more epochs on top of it beat where that round stopped.
    assert rows[3]["objective"] < earlier["objective"]
    assert "tuner/epochs" not in json.loads(result.search_dir.best_hyperparameters.read_text())


# -- interrupted and resumed --------------------------------------------------------


def _trial_status(path):
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None  # not written yet


@pytest.mark.slow
@pytest.mark.long
def test_killed_search_resumes_without_repeating_trials(tmp_path, space_file):
    config = _tiny(tmp_path / "features")
    directory, retrained = tmp_path / "tune", tmp_path / "best-run"
    command = kcap_command(
        "tune", "--directory", str(directory), "--tuner", "random", "--max-trials", "4",
        "--search-space", str(space_file), "--retrain-best", str(retrained), *_flags(config),
    )
    second = directory / "trials" / "trial_1" / "trial.json"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while _trial_status(second) != "COMPLETED":
            assert process.poll() is None, f"kcap tune ended before its 2nd trial finished:\n{process.stdout.read()}"
            assert time.monotonic() < deadline, "the 2nd trial did not finish in 10 minutes"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    finished = {t.parent.name for t in (directory / "trials").glob("trial_*/trial.json") if _trial_status(t) == "COMPLETED"}
    assert {"trial_0", "trial_1"} <= finished and len(finished) < 4, finished
    assert not retrained.exists()
    first_two = {t: (directory / "trials" / f"trial_{t}" / "kcap_trial.json").stat().st_mtime_ns for t in ("0", "1")}

    out = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((directory / "summary.json").read_text())
    ids = [r["trial_id"] for r in summary["trials"]]
    assert ids == ["0", "1", "2", "3"]
    assert all(r["status"] == "COMPLETED" for r in summary["trials"])
    assert len({json.dumps(r["hyperparameters"], sort_keys=True) for r in summary["trials"]}) == 4
    # Trials 0 and 1 were not trained again.
    for trial_id, mtime in first_two.items():
        assert (directory / "trials" / f"trial_{trial_id}" / "kcap_trial.json").stat().st_mtime_ns == mtime
    # --retrain-best trained a run with the best trial's settings.
    settings = json.loads((retrained / "config.json").read_text())["settings"]
    best = summary["best"]["hyperparameters"]
    assert {k: settings[k] for k in best} == best
    assert (retrained / "model.keras").is_file()


# -- the best hyperparameters, trained, evaluated, exported -------------------------


@pytest.fixture(scope="module")
def best_run(searched, tmp_path_factory):
    """`kcap train --hparams best_hyperparameters.json` in a real subprocess."""
    config, result = searched
    run = tmp_path_factory.mktemp("best") / "run"
    hparams = result.search_dir.best_hyperparameters
    out = subprocess.run(
        kcap_command("train", "--run-dir", str(run), *_flags(config), "--hparams", str(hparams)),
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return run, json.loads(hparams.read_text())


@pytest.mark.slow
def test_best_hyperparameters_train_a_run(best_run):
    run, best = best_run
    settings = json.loads((run / "config.json").read_text())["settings"]
    assert {k: settings[k] for k in best} == best  # the file won over the --embedding-dim/--units flags


@pytest.mark.slow
def test_best_run_exports(best_run, tmp_path):
    import tensorflow as tf

    from kcap.export import export_run
    from kcap.inference import load_run

    run, _ = best_run
    output = export_run(run, tmp_path / "export")
    image = json.loads((run / "splits.json").read_text())["splits"]["test"][0]["image"]
    serving = tf.saved_model.load(str(output))
    result = serving.signatures["serving_default"](image_bytes=tf.constant([open(image, "rb").read()]))
    assert [c.decode() for c in result["caption"].numpy()] == [load_run(run).caption_files([image])[0]["caption"]]


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("space, message", [
    ({"colour": {"type": "choice", "values": [1, 2]}}, "key 'colour' is not a kcap training setting"),
    ({"backbone": {"type": "choice", "values": ["a", "b"]}}, "key 'backbone' cannot be tuned"),
    ({"units": {"type": "choice", "values": [32, 64.5]}}, "key 'units'.*mixes types"),
    ({"units": {"type": "choice", "values": ["32"]}}, "key 'units': units takes int"),
    ({"clipnorm": {"type": "choice", "values": [None, 1.0]}}, "key 'clipnorm': null cannot be one of the \"values\""),
    ({"units": {"type": "float", "min": 16, "max": 64}}, "key 'units'.*cannot set it"),
    ({"learning_rate": {"type": "float", "min": 0.01, "max": 0.001}}, "key 'learning_rate'.*less than"),
    ({"learning_rate": {"type": "float", "min": 0, "max": 0.01, "sampling": "log"}}, "key 'learning_rate': log sampling"),
    ({"units": {"type": "int", "min": 16, "max": 128, "step": 1, "sampling": "log"}}, "key 'units': with log sampling \"step\" is a factor"),
    ({"dropout": {"type": "float", "min": 0.0, "max": 1.5}}, "key 'dropout': the value 1.5 is out of range"),
    ({"dropout": {"type": "float", "min": 0.0, "max": 0.5, "step": 0.8}}, "key 'dropout': \"step\" 0.8 goes past \"max\""),
    ({"dropout": {"type": "range", "min": 0.0, "max": 0.5}}, "key 'dropout'.*\"type\" must be one of"),
    ({"units": {"type": "choice", "value": [32]}}, "key 'units'.*needs \\['values'\\]"),
    ({}, "empty"),
])
def test_search_space_errors_name_the_key(tmp_path, space, message):
    from tuning.hypermodel import load_search_space

    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    with pytest.raises(ValueError, match=message) as error:
        load_search_space(path)
    assert str(path) in str(error.value)


def test_a_true_false_choice_reaches_best_hyperparameters_as_booleans_that_train_accepts(tmp_path):
    import keras_tuner

    from tuning.hypermodel import declare_hyperparameters
    from kcap.training.hparams import apply_hparams
    from tuning.search import hyperparameter_values

    hp = keras_tuner.HyperParameters()
    declare_hyperparameters(hp, {"position_embedding": {"type": "choice", "values": [False, True]}})
    assert hp.values == {"position_embedding": 0}  # keras-tuner's own record: a bool is an int to it
    values = hyperparameter_values(keras_tuner.engine.trial.Trial(hp))
    assert values == {"position_embedding": False}
    best = tmp_path / "best_hyperparameters.json"
    best.write_text(json.dumps(values))
    assert apply_hparams(TrainConfig(data="synthetic"), best).position_embedding is False


@pytest.mark.parametrize("spec, expected", [
    ({"min": 0.0, "max": 0.5, "step": 0.1}, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
    ({"min": 0.0, "max": 0.99999999, "step": 0.1}, [round(0.1 * i, 1) for i in range(10)]),  # 1.0 is past max
    ({"min": 0.1, "max": 0.3, "step": 0.1}, [0.1, 0.2, 0.3]),
])
def test_a_float_step_range_draws_every_value_it_names_and_the_bayesian_oracle_maps_each_back(spec, expected):
    import keras_tuner

    from tuning.hypermodel import declare_hyperparameters, typed_value

    hp = keras_tuner.HyperParameters()
    declare_hyperparameters(hp, {"dropout": {"type": "float", **spec}})
    (dropout,) = hp.space
    drawn = {typed_value("dropout", dropout.prob_to_value(i / 100)) for i in range(100)}
    assert sorted(drawn) == expected
    # The Bayesian oracle learns from each trial at the slot its value maps back to.
    assert [dropout.prob_to_value(dropout.value_to_prob(v)) for v in expected] == expected


def test_float_values_lose_binary_step_noise_but_keep_every_digit_written():
    from tuning.hypermodel import typed_value

    assert typed_value("dropout", 0.1 * 3) == 0.3  # what a search begun with keras-tuner's Float steps draws
    assert typed_value("dropout", 0.9999999999999) == 0.9999999999999  # a fixed value, as written
    assert typed_value("learning_rate", 0.0012345678901234) == 0.0012345678901234


def test_each_trials_new_captioner_traces_its_decoder_without_a_retracing_warning():
    # A fresh process: TensorFlow warns of a function's retracing twice at most per process,
    # so in this one earlier tests may have used both.
    script = """
import sys

import numpy as np
from kcap.model.backbones import build_backbone
from kcap.model.captioner import Captioner
from tuning.search import one_decoder_per_trial

def caption_with_new_models():
    for _ in range(5):  # TensorFlow warns at the fifth trace in its last ten calls
        backbone = build_backbone("small_cnn", weights=None, image_size=32)
        model = Captioner(backbone, 12, 4, (32, 32), embedding_dim=8, units=8, preprocessing="scale")
        model.generate({"images": np.zeros((2, 32, 32, 3), "uint8")}, jit_compile=False)

with one_decoder_per_trial():
    caption_with_new_models()
print("-- without --", file=sys.stderr, flush=True)
caption_with_new_models()  # what each search used to print
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    searching, without = out.stderr.split("-- without --")
    assert "triggered tf.function retracing" not in searching
    assert "triggered tf.function retracing" in without


def test_hyperband_with_one_epoch_is_refused_before_any_data_is_read(tmp_path):
    from tuning.search import search

    with pytest.raises(ValueError, match="--tuner hyperband needs --epochs of at least 2"):
        search(_tiny(tmp_path / "features"), tmp_path / "tune", tuner="hyperband")
    assert not (tmp_path / "tune").exists() and not (tmp_path / "features").exists()


def test_search_space_json_errors_name_the_line(tmp_path):
    from tuning.hypermodel import load_search_space

    path = tmp_path / "space.json"
    path.write_text('{\n  "units": {"type": "choice", "values": [32, 64]},\n}\n')
    with pytest.raises(ValueError, match=r"space\.json, line 3: not valid JSON"):
        load_search_space(path)


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_the_same_seed_draws_the_same_trials(tmp_path, kind):
    # Workers of a multi-worker search, and a search run again, rely on it: also for the default seed 0.
    import keras
    import keras_tuner

    from tuning.search import make_tuner

    class TinyHyperModel(keras_tuner.HyperModel):
        def build(self, hp):
            hp.Choice("units", [8, 16, 32, 64])
            hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
            return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    def first_trials(directory, seed):
        tuner = make_tuner(kind, TinyHyperModel(), tmp_path / directory, max_trials=3, max_epochs=4, seed=seed)
        return [tuner.oracle.create_trial(f"tuner{i}").hyperparameters.values for i in range(3)]

    assert first_trials("a", 0) == first_trials("b", 0) != first_trials("c", 1)


def test_neighbouring_seeds_draw_unrelated_trials(tmp_path):
    # keras-tuner seeds its n-th draw with seed + n: seeds 1 apart must not be passed to it as such.
    import keras
    import keras_tuner

    from tuning.search import make_tuner

    class OneSetting(keras_tuner.HyperModel):
        def build(self, hp):
            hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
            return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    def drawn(seed):
        tuner = make_tuner("random", OneSetting(), tmp_path / str(seed), max_trials=5, seed=seed)
        return {tuner.oracle.create_trial(f"t{i}").hyperparameters.values["learning_rate"] for i in range(5)}

    assert not drawn(1) & drawn(2)


def test_default_search_space_is_valid():
    from tuning.hypermodel import DEFAULT_SEARCH_SPACE, load_search_space

    space = load_search_space(DEFAULT_SEARCH_SPACE)
    assert {"embedding_dim", "units", "learning_rate", "dropout"} <= set(space)


def test_apply_hparams_overrides_settings_and_rejects_bad_files(tmp_path, caplog):
    from kcap.training.hparams import apply_hparams

    base = TrainConfig(data="synthetic", units=32)
    good = tmp_path / "best.json"
    good.write_text(json.dumps({"units": 64, "learning_rate": 0.002}))
    with caplog.at_level("WARNING", logger="kcap"):
        config = apply_hparams(base, good)
    assert (config.units, config.learning_rate, config.data) == (64, 0.002, "synthetic")
    # units=32 was asked for along with the file: the user hears that the file's 64 wins.
    assert caplog.messages == [f"{good} overrides units=32 given with it: training with units=64."]

    for content, message in [
        ({"units": 64, "colour": "red", "size": 3}, r"unknown setting\(s\) \['colour', 'size'\]"),
        ({"units": "64"}, "key 'units' should be"),
        ({"dropout": 2.0}, "dropout must be in"),
        ([64], "expected a JSON object"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message) as error:
            apply_hparams(base, bad)
        assert str(bad) in str(error.value)


def test_tune_command_reports_a_bad_search_space(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"image_size": {"type": "choice", "values": [64, 96]}}))
    out = subprocess.run(
        kcap_command("tune", "--data", "synthetic", "--directory", str(tmp_path / "tune"), "--search-space", str(space)),
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2
    assert "kcap tune: error:" in out.stderr and "'image_size' cannot be tuned" in out.stderr
    assert not (tmp_path / "tune").exists()



def test_the_retrained_run_monitors_the_objective_unless_told_otherwise():
    from kcap.cli import build_parser
    from tuning.command import tune_config

    def monitor(*flags):
        return tune_config(build_parser().parse_args(["tune", "--data", "synthetic", "--directory", "d", *flags])).monitor

    assert monitor() == "val_loss" and monitor("--objective", "val_bleu4") == "val_bleu4"
    assert monitor("--objective", "val_bleu4", "--monitor", "val_cider") == "val_cider"
    # Trials score val_bleu4 themselves, so a search with no per-epoch captioning is still valid.
    assert monitor("--objective", "val_bleu4", "--val-captions", "0") == "val_loss"


def test_a_wrong_retrain_epochs_is_refused_before_the_search(tmp_path, capsys):
    from kcap.cli import main

    base = ["tune", "--data", "synthetic", "--directory", str(tmp_path / "tune")]
    with pytest.raises(SystemExit):  # argparse's own refusal
        main([*base, "--retrain-best", str(tmp_path / "run"), "--retrain-epochs", "0"])
    assert "argument --retrain-epochs: must be at least 1, got 0" in capsys.readouterr().err
    assert main([*base, "--retrain-epochs", "3"]) == 2
    assert "--retrain-epochs sets the epochs of the --retrain-best run; give --retrain-best RUN too" in capsys.readouterr().err
    assert not (tmp_path / "tune").exists()


def test_tune_directory_that_is_a_file_is_refused_by_name(tmp_path, capsys):
    from kcap.cli import main

    (tmp_path / "captions.csv").write_text("image,caption\n")
    assert main(["tune", "--data", "synthetic", "--directory", str(tmp_path / "captions.csv")]) == 2
    assert f"--directory {tmp_path / 'captions.csv'} is a file; give the folder for the search" in capsys.readouterr().err
    assert (tmp_path / "captions.csv").read_text() == "image,caption\n"
