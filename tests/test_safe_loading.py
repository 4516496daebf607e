"""Nothing loads by executing code (no pickle, eval or unsafe Keras deserialisation), and every file a
run reads back is validated on load, with the file and key named."""

import ast
import json

import pytest

from conftest import REPO, TINY
from faults import run_kcap

from kcap.training.config import TrainConfig
from kcap.text.vocabulary import Vocabulary


UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _python_files():
    for folder in ("kcap", "tuning"):
        yield from sorted((REPO / folder).rglob("*.py"))


def unsafe_code(source: str, name: str) -> list[str]:
    """Every place in `source` that runs code or unpickles: eval/exec/compile, pickle-like modules,
    `allow_pickle=True`, `safe_mode=False`, Keras' unsafe deserialisation switch."""
    offences = []
    for node in ast.walk(ast.parse(source, filename=name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in UNSAFE_CALLS:
            offences.append(f"{where}: {node.func.id}()")
        if isinstance(node, ast.Import):
            offences += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            offences.append(f"{where}: from {node.module} import ...")
        if isinstance(node, ast.keyword) and node.arg in ("allow_pickle", "safe_mode"):
            # Only the safe constant passes: allow_pickle=False, safe_mode=True.
            if not (isinstance(node.value, ast.Constant) and node.value.value is (node.arg == "safe_mode")):
                offences.append(f"{where}: {node.arg}={ast.unparse(node.value)}")
        if isinstance(node, ast.Attribute) and node.attr == "enable_unsafe_deserialization":
            offences.append(f"{where}: .{node.attr}")
    return offences


def test_no_pickle_eval_or_exec_anywhere_in_the_package():
    files = list(_python_files())
    assert len(files) > 30  # the package was found
    offences = [o for path in files for o in unsafe_code(path.read_text(), str(path.relative_to(REPO)))]
    assert not offences, "code that loads by executing:\n" + "\n".join(offences)


@pytest.mark.parametrize(
    "line",
    [
        "import pickle", "import cloudpickle as cp", "from marshal import loads", "eval('1 + 1')",
        "exec(text)", "np.load(path, allow_pickle=True)", "np.load(path, allow_pickle=flag)",
        "keras.models.load_model(path, safe_mode=False)", "keras.config.enable_unsafe_deserialization()",
    ],
)
def test_the_scan_catches_each_pattern(line):
    assert unsafe_code(f"import numpy as np\n{line}\n", "sample.py"), line
    assert not unsafe_code("np.load(path, allow_pickle=False)\nload_model(p, safe_mode=True)\nmodel.compile()\n", "ok.py")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
        ({"epochs": "10"}, r"key 'epochs' should be <class 'int'>, got '10'"),
        ({"epochs": True}, r"key 'epochs' should be <class 'int'>, got True"),
        ({"learning_rate": None}, r"key 'learning_rate' should be <class 'float'>, got None"),
        ({"data": ...}, r"missing key\(s\) \['data'\]"),
    ],
)
def test_config_json_is_validated_on_load(tmp_path, change, message):
    settings = TrainConfig(data="synthetic", **TINY).to_json()
    for key, value in change.items():
        if value is ...:
            del settings[key]
        else:
            settings[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"settings": settings}))
    with pytest.raises(ValueError, match=rf"{path}: {message}"):
        TrainConfig.load(path)


def test_another_programs_config_json_is_not_read_as_a_run(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"port": 8080, "project": "web"}))
    with pytest.raises(ValueError, match=rf"{path} is not a kcap configuration \(no 'settings'\); is {tmp_path} a kcap run directory"):
        TrainConfig.load(path)


def test_bad_on_bad_image_value_is_refused():
    with pytest.raises(ValueError, match="on_bad_image must be 'error' or 'skip'"):
        TrainConfig(data="synthetic", on_bad_image="ignore").resolved()
    result = run_kcap("train", "--run-dir", "unused", "--data", "synthetic", "--on-bad-image", "ignore")
    assert result.returncode == 2 and "invalid choice: 'ignore'" in result.stderr


@pytest.mark.parametrize(
    "data, message",
    [
        ({"format": "kcap.vocabulary", "version": 1, "max_length": 5}, r"keys missing \['words'\]"),
        ({"format": "kcap.vocabulary", "version": 1, "max_length": 5, "words": [], "extra": 1}, r"unknown \['extra'\]"),
        ({"format": "kcap.vocabulary", "version": 1, "max_length": "5", "words": []}, r"'max_length' must be an integer"),
        ({"format": "kcap.vocabulary", "version": 1, "max_length": 5, "words": ["<pad>", 3]}, r"'words' must be a list of strings"),
        ({"format": "kcap.vocabulary", "version": 1, "max_length": 5, "words": ["a", "b"]}, r"A vocabulary must start with the special tokens"),
        ({"format": "kcap.vocabulary", "version": 2, "max_length": 5, "words": []}, r"unsupported vocabulary version 2"),
        ({"words": ["<pad>"]}, r"not a kcap vocabulary"),
    ],
)
def test_vocab_json_is_validated_on_load(tmp_path, data, message):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{path}: (keys missing \[\] / )?{message}"):
        Vocabulary.load(path)


def test_a_tampered_run_is_refused_with_the_file_and_key(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["words"][5] = 7
    (run / "vocab.json").write_text(json.dumps(vocab))
    result = run_kcap("caption", "--run-dir", str(run), "anything.png")
    assert result.returncode == 2
    assert f"kcap caption: error: {run / 'vocab.json'}: 'words' must be a list of strings" in result.stderr


def test_a_damaged_or_missing_checkpoint_is_named_with_what_to_do(trained_run, tmp_path, caplog):
    import shutil

    from kcap.inference import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    image = json.loads((run / "splits.json").read_text())["splits"]["test"][0]["image"]
    best = run / "checkpoints" / "best.keras"
    best.write_bytes(best.read_bytes()[:1000])  # a copy cut short
    result = run_kcap("caption", "--run-dir", str(run), image)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{best} is not a complete .keras file (truncated or damaged" in result.stderr
    assert "--checkpoint last" in result.stderr
    assert load_run(run, "last").model_file == run / "model.keras"
    # Without best.keras the last epoch's model is used, and the user is told so.
    best.unlink()
    with caplog.at_level("WARNING", logger="kcap"):
        assert load_run(run, "best").model_file == run / "model.keras"
    assert f"{best} is missing; using {run / 'model.keras'} (the last epoch)" in caplog.text


def test_hyperparameter_files_are_validated_on_load(tmp_path):
    from kcap.training.hparams import apply_hparams

    config = TrainConfig(data="synthetic")
    path = tmp_path / "best.json"
    for content, message in [
        ('{"units": 64, "dropout": "high"}', r"key 'dropout' should be <class 'float'>, got 'high'"),
        ('{"unit": 64}', r"unknown setting\(s\) \['unit'\]"),
        ('{"units": 64,}', r"line 1: not valid JSON"),
        ('[64]', r"expected a JSON object"),
    ]:
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            apply_hparams(config, path)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a folder; give the JSON file itself"):
        apply_hparams(config, tmp_path)
