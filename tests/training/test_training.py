import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kcap_command

from kcap.training.callbacks import ResumeCheckpoint
from kcap.training.config import TrainConfig
from kcap.training.run_dir import RunDir
from kcap.training.trainer import train


def test_run_directory_holds_everything_a_run_needs(trained_run, tiny_config):
    run = RunDir(trained_run)
    for path in (run.config, run.vocabulary, run.splits, run.history, run.final_model,
                 run.best_model, ResumeCheckpoint.weights_path(run.resume_state), run.resume_state):
        assert path.is_file(), path
    assert any(run.logs.rglob("events.out.tfevents.*"))
    config = json.loads(run.config.read_text())
    settings = TrainConfig.load(run.config)
    assert settings == tiny_config.resolved()  # every setting, resolved, round-trips
    assert settings.backbone == "small_cnn" and settings.train_backbone
    assert config["vocabulary"]["size"] == len(json.loads(run.vocabulary.read_text())["words"])
    history = json.loads(run.history.read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2]
    assert {"loss", "masked_accuracy", "val_loss", "val_masked_accuracy", "val_bleu4", "val_cider"} <= set(history[0])
    splits = json.loads(run.splits.read_text())["splits"]
    names = {s: {i["image"] for i in splits[s]} for s in splits}
    assert not (names["train"] & names["test"]) and len(names["test"]) == 8


def test_caption_command_prints_the_models_captions_for_each_decoding(trained_run, capsys):
    from kcap.cli import main
    from kcap.inference import load_run

    paths = [i["image"] for i in json.loads((trained_run / "splits.json").read_text())["splits"]["test"][:3]]
    trained = load_run(trained_run)
    for flags, decoding in [([], {}), (["--beam-size", "3"], {"beam_size": 3}), (["--temperature", "1.5"], {"temperature": 1.5})]:
        assert main(["caption", "--run-dir", str(trained_run), *flags, *paths]) == 0
        lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
        assert lines == [[r["image"], r["caption"]] for r in trained.caption_files(paths, **decoding)], flags


def test_an_image_whose_file_name_is_not_utf8_is_captioned(trained_run, tmp_path, capsys):
    import os

    from kcap.cli import main
    from kcap.inference import load_run

    test_image = json.loads((trained_run / "splits.json").read_text())["splits"]["test"][0]["image"]
    folder = tmp_path / "images"
    folder.mkdir()
    # Linux allows any bytes in a name (a Latin-1 file system copied over, say); Python holds these as surrogates.
    odd = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png")
    shutil.copy(test_image, odd)
    expected = load_run(trained_run).caption_files([test_image])[0]["caption"]
    assert main(["caption", "--run-dir", str(trained_run), str(folder)]) == 0
    # The byte that is not UTF-8 is written \xNN, as a tab in a name is written \t: the output stays UTF-8.
    assert capsys.readouterr().out.splitlines() == [f"{folder}/caf\\xe9.png\t{expected}"]
    assert main(["caption", "--run-dir", str(trained_run), "--attention-plot", str(tmp_path / "att.png"), odd]) == 0
    assert (tmp_path / "att.png").is_file()


def test_a_wrong_attention_plot_request_is_refused_before_any_captioning(trained_run, tmp_path, capsys):
    from kcap.cli import main

    paths = [i["image"] for i in json.loads((trained_run / "splits.json").read_text())["splits"]["test"][:2]]
    for images, plot, message in [
        (paths, "att.png", "--attention-plot draws one image: give exactly one IMAGE"),
        (paths[:1], "att.txt", "must end in one of .png"),
    ]:
        assert main(["caption", "--run-dir", str(trained_run), "--attention-plot", str(tmp_path / plot), *images]) == 2
        out, err = capsys.readouterr()
        assert message in err and out == ""  # refused up front, not after the captions
    # Right, it writes the plot after the caption line.
    assert main(["caption", "--run-dir", str(trained_run), "--attention-plot", str(tmp_path / "att.jpg"), paths[0]]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and out.startswith(f"{paths[0]}\t")  # stdout: the captions alone
    assert f"Wrote {tmp_path / 'att.jpg'}" in err
    assert (tmp_path / "att.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_decoding_flags_that_cannot_work_are_refused_before_the_run_is_read(tmp_path, capsys):
    from kcap.cli import main

    nowhere = str(tmp_path / "no-run")
    for command in (["evaluate"], ["caption", str(tmp_path / "no.jpg")]):
        assert main([*command, "--run-dir", nowhere, "--beam-size", "3", "--temperature", "0.7"]) == 2
        assert "Choose --temperature (sampling) or --beam-size above 1 (beam search), not both" in capsys.readouterr().err
        assert main([*command, "--run-dir", nowhere, "--no-repeat-ngram", "3", "--temperature", "0.7"]) == 2
        assert "--no-repeat-ngram guards greedy decoding and beam search, not --temperature" in capsys.readouterr().err
    for flag, value, reason in (
        ("--temperature", "0", "must be a number above 0, got 0"), ("--beam-size", "0", "must be at least 1, got 0"),
        ("--temperature", "warm", "expected a number, got 'warm'"), ("--beam-size", "2.5", "expected an integer, got '2.5'"),
        ("--no-repeat-ngram", "-1", "must be at least 0, got -1"),
    ):
        with pytest.raises(SystemExit):
            main(["evaluate", "--run-dir", nowhere, flag, value])
        assert f"argument {flag}: {reason}" in capsys.readouterr().err


def test_caption_output_is_one_line_per_image_whatever_the_file_name(trained_run, tmp_path, capsys):
    from kcap.cli import main

    source = json.loads((trained_run / "splits.json").read_text())["splits"]["test"][0]["image"]
    odd = tmp_path / "a\tb\nc\\d.png"
    shutil.copy(source, odd)
    assert main(["caption", "--run-dir", str(trained_run), str(odd)]) == 0
    [line] = capsys.readouterr().out.splitlines()
    path, caption = line.split("\t")
    assert path == f"{tmp_path}/a\\tb\\nc\\\\d.png"  # tab, newline and backslash escaped


def test_caption_command_captions_every_image_in_a_folder(trained_run, tmp_path, capsys):
    from kcap.cli import main

    splits = json.loads((trained_run / "splits.json").read_text())["splits"]
    paths = [Path(i["image"]) for i in splits["test"][:3]]
    folder = tmp_path / "photos"
    folder.mkdir()
    for number, path in enumerate(paths):  # names that sort in reverse of the test order
        shutil.copy(path, folder / f"{9 - number}{path.suffix.upper()}")
    (folder / "notes.txt").write_text("not an image")
    (folder / "older").mkdir()

    def caption(*args):
        assert main(["caption", "--run-dir", str(trained_run), *args]) == 0
        return [line.split("\t") for line in capsys.readouterr().out.splitlines()]

    from_folder = caption(str(folder))
    assert [image for image, _ in from_folder] == [str(folder / f"{9 - n}{p.suffix.upper()}") for n, p in reversed(list(enumerate(paths)))]
    # The same captions as for the files named one by one.
    assert [c for _, c in from_folder] == [c for _, c in caption(*map(str, reversed(paths)))]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["caption", "--run-dir", str(trained_run), str(empty)]) == 2
    assert f"The folder {empty} has no image files" in capsys.readouterr().err


def test_caption_command_names_a_missing_or_broken_image(trained_run, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = subprocess.run(
        kcap_command("caption", "--run-dir", str(trained_run), str(tmp_path / "missing.png"), str(broken)),
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "missing.png" in out.stderr and "broken.jpg" in out.stderr
    assert "Traceback" not in out.stderr


def test_early_stopping_remembers_how_long_it_waited_across_a_resume():
    import keras

    from kcap.training.callbacks import ResumableEarlyStopping

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    # Epochs 1-3 happened before the resume: the best was epoch 2, one epoch without improvement since.
    stopper = ResumableEarlyStopping([1.0, 0.9, 0.95], monitor="val_loss", mode="min", patience=2)
    stopper.set_model(model)
    stopper.on_train_begin()
    assert stopper.best == 0.9 and stopper.wait == 1
    stopper.on_epoch_end(3, {"val_loss": 0.96})
    assert model.stop_training  # two epochs without improvement


def test_a_run_that_stopped_early_is_finished_when_run_again(tmp_path, tiny_config, caplog):
    import dataclasses

    # Too small a learning rate to improve the captions much (batch norm statistics still move).
    config = dataclasses.replace(
        tiny_config, epochs=4, learning_rate=1e-9, monitor="val_bleu4", early_stopping=1, val_captions=8
    )
    run_dir = tmp_path / "run"
    stopped = train(config, run_dir, verbose=0)["epochs"]
    assert len(stopped) < 4 and json.loads((run_dir / "checkpoints" / "resume.json").read_text())["stopped_early"]
    with caplog.at_level("INFO", logger="kcap"):
        again = train(config, run_dir, verbose=0)["epochs"]
    assert again == stopped and f"{run_dir} already finished ({len(stopped)} epochs)" in caplog.text
    # A larger --epochs does not train it on, says why, and leaves config.json saying how it was trained.
    caplog.clear()
    with caplog.at_level("INFO", logger="kcap"):
        longer = train(dataclasses.replace(config, epochs=10), run_dir, verbose=0)["epochs"]
    assert longer == stopped and "early stopping ended it, and a larger --epochs does not train it on" in caplog.text
    assert TrainConfig.load(run_dir / "config.json").epochs == 4


def test_a_finished_run_missing_its_resume_checkpoint_is_refused_not_trained_again(tmp_path, trained_run, tiny_config):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    history = (run_dir / "history.json").read_text()
    best = (run_dir / "checkpoints" / "best.keras").read_bytes()
    for state in (run_dir / "checkpoints").glob("resume*"):
        state.unlink()
    with pytest.raises(ValueError, match=r"history.json lists 2, and model.keras is there\), but its resume checkpoint .*resume.json is missing"):
        train(tiny_config, run_dir, verbose=0)
    # Nothing of the finished run was overwritten.
    assert (run_dir / "history.json").read_text() == history
    assert (run_dir / "checkpoints" / "best.keras").read_bytes() == best


def test_monitoring_a_validation_score_without_validation_images_is_refused(tmp_path, tiny_config, caplog):
    import dataclasses

    no_val = dataclasses.replace(tiny_config, val_fraction=0.0, epochs=1)
    with pytest.raises(ValueError, match=r"--monitor val_bleu4 needs validation images.*--val-fraction"):
        train(dataclasses.replace(no_val, monitor="val_bleu4", early_stopping=2), tmp_path / "bleu", verbose=0)
    # Refused before anything is written: no folder is left behind.
    assert not (tmp_path / "bleu").exists()
    with caplog.at_level("WARNING", logger="kcap"):
        train(dataclasses.replace(no_val, early_stopping=2), tmp_path / "loss", verbose=0)
    assert "No validation images: best.keras and early stopping follow the training loss" in caplog.text
    assert RunDir(tmp_path / "loss").best_model.is_file()


def test_monitoring_cider_over_a_single_validation_image_is_refused(tmp_path, tiny_config):
    import dataclasses

    one = dataclasses.replace(tiny_config, monitor="val_cider", val_captions=1, epochs=1)
    with pytest.raises(ValueError, match=r"val_cider needs at least 2 validation images.*captions 1 \(--val-captions 1"):
        train(one, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_kcap_train_without_flags_is_the_default_train_config():
    from kcap.cli import build_parser
    from kcap.training.flags import train_config

    for data in ("synthetic", "captions.csv"):
        assert train_config(build_parser().parse_args(["train", "--data", data, "--run-dir", "r"])) == TrainConfig(data=data)


def test_changed_settings_on_an_existing_run_are_refused(trained_run, tiny_config):
    import dataclasses

    with pytest.raises(ValueError, match="units: 32 → 64"):
        train(dataclasses.replace(tiny_config, units=64), trained_run, verbose=0)


def _history(run_dir):
    return json.loads((run_dir / "history.json").read_text())["epochs"]


@pytest.mark.slow
def test_mixed_bfloat16_training_computes_in_bfloat16_and_saves_a_float32_model(tmp_path, trained_run, tiny_config):
    import dataclasses

    import keras
    import numpy as np

    from kcap.data.images import load_image
    from kcap.inference import load_run
    from kcap.training.assembly import prepare_data
    from kcap.training.trainer import build_captioner

    config = dataclasses.replace(tiny_config, mixed_precision="mixed_bfloat16")
    data = prepare_data(config.resolved())
    model = build_captioner(config.resolved(), data.vocabulary)
    assert model.decoder.compute_dtype == "bfloat16" and model.encoder.compute_dtype == "bfloat16"
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    assert keras.config.dtype_policy().name == "float32"  # restored once the model is built

    run_dir = tmp_path / "bf16"
    train(config, run_dir, verbose=0)
    assert keras.config.dtype_policy().name == "float32"
    losses = [epoch["loss"] for epoch in _history(run_dir)]
    float32_losses = [epoch["loss"] for epoch in _history(trained_run)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    # Same seed, same data: bfloat16's 8-bit mantissa moves the loss a little, not a lot.
    assert losses[-1] == pytest.approx(float32_losses[-1], rel=0.1)
    assert TrainConfig.load(run_dir / "config.json").mixed_precision == "mixed_bfloat16"

    # The saved model captions in float32, like any other run.
    trained = load_run(run_dir)
    # Every layer: the backbone and the preprocessing were built under the mixed policy too.
    assert {layer.dtype_policy.name for layer in trained.model._flatten_layers()} == {"float32"}
    images = [str(image.path) for image in data.dataset.subset("test")[:3]]
    pixels = np.stack([load_image(path, trained.model.image_size) for path in images])
    assert trained.model.extract_features(pixels).dtype.name == "float32"
    captions = [row["caption"] for row in trained.caption_files(images)]
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)


def test_an_unknown_mixed_precision_policy_is_refused(tiny_config):
    import dataclasses

    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        dataclasses.replace(tiny_config, mixed_precision="float16").resolved()


def test_like_length_batches_are_the_default_only_where_the_backbone_is_frozen(tiny_config):
    import dataclasses

    from kcap.training.config import LENGTH_POOL

    # A training backbone's batch norm sees each batch: like-length (so like-scene) batches skew it.
    assert dataclasses.replace(tiny_config, train_backbone=True).resolved().length_pool == 1
    assert dataclasses.replace(tiny_config, train_backbone=False).resolved().length_pool == LENGTH_POOL
    assert dataclasses.replace(tiny_config, train_backbone=True, length_pool=5).resolved().length_pool == 5


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"val_captions": -5}, "val_captions must be 0 or more"),
        ({"image_size": 0}, "image_size must be at least 32"),
        ({"image_size": -5}, "image_size must be at least 32"),
        ({"clipnorm": -1.0}, "clipnorm must be positive"),
        ({"seed": -1}, r"seed must be from 0 to 2\*\*32 - 1"),
        ({"seed": 2**32}, r"seed must be from 0 to 2\*\*32 - 1"),
        ({"learning_rate": float("inf")}, "learning_rate must be positive and finite"),
        ({"min_word_count": 0}, "min_word_count must be at least 1"),
        ({"length_pool": 0}, "length_pool must be at least 1"),
        ({"lr_schedule": "linear"}, "lr_schedule must be 'constant' or 'cosine'"),
        ({"lr_schedule": "cosine", "warmup_epochs": 2.0}, "warmup_epochs must be from 0 to below epochs"),
        ({"warmup_epochs": 0.5}, "warmup_epochs needs lr_schedule 'cosine'"),
        ({"data": ""}, "data is empty"),
        ({"scst_sampler": "top_k"}, "scst_sampler must be 'random' or 'beam'"),
        ({"sample_max_length": 0}, "sample_max_length must be at least 1"),
    ],
)
def test_out_of_range_settings_are_refused_before_any_work(tmp_path, tiny_config, setting, message):
    import dataclasses

    with pytest.raises(ValueError, match=f"Invalid configuration: {message}"):
        train(dataclasses.replace(tiny_config, **setting), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_a_vocabulary_with_no_words_is_refused(tmp_path, tiny_config):
    import dataclasses

    with pytest.raises(ValueError, match=r"No word of the training captions appears 100000 times or more"):
        train(dataclasses.replace(tiny_config, min_word_count=100000), tmp_path / "run", verbose=0)


@pytest.mark.parametrize("command", [["caption", "--run-dir", "x", "a.png"], ["evaluate", "--run-dir", "x"]])
def test_a_batch_size_of_zero_is_a_usage_error(command, capsys):
    from kcap.cli import main

    with pytest.raises(SystemExit) as exited:  # argparse's usage error
        main([*command, "--batch-size", "0"])
    assert exited.value.code == 2
    assert "argument --batch-size: must be at least 1, got 0" in capsys.readouterr().err


def test_help_and_version_do_not_load_tensorflow():
    # Loading it takes seconds and prints TensorFlow's start-up lines; `kcap --help` needs neither.
    code = (
        "import sys, contextlib, io\n"
        "from kcap.cli import main\n"
        "for argv in (['--help'], ['--version'], ['train', '--help'], ['tune', '--help'], ['export', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"], done.stderr[-2000:]


def test_the_validation_captions_come_before_every_callback_that_reads_their_scores(tiny_config, tmp_path):
    import dataclasses

    from kcap.training.assembly import prepare_data
    from kcap.training.trainer import _callbacks

    config = dataclasses.replace(tiny_config, monitor="val_cider", early_stopping=2).resolved()
    data = prepare_data(config)
    callbacks = _callbacks(config, RunDir(tmp_path), data, previous=[])
    assert [type(c).__name__ for c in callbacks] == [
        "VocabularyExport", "TerminateOnNaN", "ValidationCaptioning", "BestModelCheckpoint",
        "ResumableEarlyStopping", "HistoryLog", "ResumeCheckpoint", "TensorBoard",
    ]
    assert callbacks[2].log_dir == tmp_path / "logs" / "captions"
    assert len(callbacks[2].image_paths) == min(config.val_captions, len(data.val_images))
