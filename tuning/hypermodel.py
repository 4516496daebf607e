"""The captioner as a keras-tuner `HyperModel`, and the JSON search space it is built from.

A search space file maps `TrainConfig` settings to value ranges:

```json
{
  "embedding_dim": {"type": "choice", "values": [128, 256, 512]},
  "units":         {"type": "choice", "values": [256, 512, 1024]},
  "learning_rate": {"type": "float", "min": 1e-4, "max": 3e-3, "sampling": "log"},
  "dropout":       {"type": "float", "min": 0.0, "max": 0.5, "step": 0.1}
}
```

Types: `choice` (`values`, optional `ordered`), `int` and `float` (`min`,
`max`, optional `step` and `sampling`: `linear`, `log`, `reverse_log`),
`boolean`, `fixed` (`value`). A linear `float` range with a `step` is
searched as the ordered choice of its values, max included when it is a
whole number of steps from min. Only settings that leave the data, the
vocabulary and the backbone features alone can be tuned (`TUNABLE`): those
are prepared once for the whole search, so no trial re-runs the backbone.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import keras_tuner

from kcap import compat
from kcap.model.captioner import Captioner
from kcap.training.assembly import (
    RunData, fit_arguments, prepare_data, training_steps, validation_captioning, with_feature_cache,
)
from kcap.training.config import TrainConfig
from kcap.training.trainer import build_captioner
from kcap.utils.files import read_json
from tuning.options import DEFAULT_SEARCH_SPACE, OBJECTIVES

# Settings a trial may change. Everything else (data, vocabulary, backbone,
# image size, normalisation, augmentation, the feature cache) is fixed for
# the whole search, because it is prepared once before the first trial.
TUNABLE = (
    "embedding_dim", "units", "learning_rate", "dropout", "batch_size", "clipnorm", "position_embedding",
    "decoder_layers", "decoder_heads",  # --decoder transformer's
    "context_gate", "deep_output",  # --decoder gru_attention's
    "label_smoothing", "attention_regularizer",
    "lr_schedule", "warmup_epochs",
    "samples_per_image", "scst_baseline", "scst_sampler", "sample_max_length", "scst_cross_entropy",  # --objective cider's (with --init-from: each trial starts from that run)
)

_SPEC_KEYS = {
    "choice": ({"values"}, {"ordered"}),
    "int": ({"min", "max"}, {"step", "sampling"}),
    "float": ({"min", "max"}, {"step", "sampling"}),
    "boolean": (set(), set()),
    "fixed": ({"value"}, set()),
}
_SAMPLINGS = ("linear", "log", "reverse_log")
_FIELD_TYPES = typing.get_type_hints(TrainConfig)


# -- the search space ---------------------------------------------------------


def load_search_space(path: str | Path = DEFAULT_SEARCH_SPACE) -> dict[str, dict]:
    """Reads and validates a search space JSON file; errors name the file and the key.

    Example:

    ```python
    space = load_search_space("tuning/search_space.json")
    space["units"]  # {"type": "choice", "values": [256, 512, 1024]}
    ```
    """
    return validate_search_space(read_json(path, "Search space file"), source=str(path))


def validate_search_space(data: Any, source: str = "search space") -> dict[str, dict]:
    """Checks a search space (already parsed JSON); returns it as a plain dict.

    >>> validate_search_space({"units": {"type": "choice", "values": [32, 64]}})
    {'units': {'type': 'choice', 'values': [32, 64]}}
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object mapping settings to ranges, got {type(data).__name__}.")
    if not data:
        raise ValueError(f"{source}: the search space is empty; name at least one of {list(TUNABLE)}.")
    for key, spec in data.items():
        _check_spec(key, spec, f"{source}: key {key!r}")
        try:  # what keras-tuner itself refuses, before any data is read
            declare_hyperparameters(keras_tuner.HyperParameters(), {key: spec})
        except ValueError as error:
            raise ValueError(f"{source}: key {key!r}: {error}") from None
    return copy.deepcopy(data)


def _check_spec(key: str, spec: Any, where: str) -> None:
    if key not in _FIELD_TYPES:
        raise ValueError(f"{where} is not a kcap training setting; tunable settings: {list(TUNABLE)}.")
    if key not in TUNABLE:
        raise ValueError(
            f"{where} cannot be tuned: the data, vocabulary, backbone and feature cache are prepared once "
            f"for the whole search. Tunable settings: {list(TUNABLE)}; set {key} with its flag instead."
        )
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected an object like {{\"type\": \"choice\", \"values\": [...]}}, got {spec!r}.")
    kind = spec.get("type")
    if kind not in _SPEC_KEYS:
        raise ValueError(f"{where}: \"type\" must be one of {list(_SPEC_KEYS)}, got {kind!r}.")
    required, optional = _SPEC_KEYS[kind]
    missing = sorted(required - set(spec))
    unknown = sorted(set(spec) - required - optional - {"type"})
    if missing:
        raise ValueError(f"{where}: a {kind!r} range needs {missing}.")
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for a {kind!r} range (allowed: {sorted(required | optional)}).")

    hint = _FIELD_TYPES[key]
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: \"values\" must be a non-empty list, got {values!r}.")
        if len(set(map(json.dumps, values))) != len(values):
            raise ValueError(f"{where}: \"values\" has duplicates: {values!r}.")
        if None in values:
            raise ValueError(
                f"{where}: null cannot be one of the \"values\": keras-tuner ranges hold numbers, strings and "
                f"booleans. Leave {key} out of the space to give every trial its flag's value instead."
            )
        if len({type(v) for v in values}) > 1:
            # keras-tuner's Choice needs one type; 1 and 0.5 mixed would sample as floats.
            raise ValueError(f"{where}: \"values\" mixes types ({values!r}); write them all as {_type_name(hint)}.")
        if "ordered" in spec and not isinstance(spec["ordered"], bool):
            raise ValueError(f"{where}: \"ordered\" must be true or false, got {spec['ordered']!r}.")
        candidates = values
    elif kind in ("int", "float"):
        number = int if kind == "int" else (int, float)
        for bound in ("min", "max"):
            value = spec[bound]
            if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
                raise ValueError(f"{where}: \"{bound}\" must be a{'n integer' if kind == 'int' else ' number'}, got {value!r}.")
        if not spec["min"] < spec["max"]:
            raise ValueError(f"{where}: \"min\" ({spec['min']}) must be less than \"max\" ({spec['max']}).")
        sampling = spec.get("sampling", "linear")
        if sampling not in _SAMPLINGS:
            raise ValueError(f"{where}: \"sampling\" must be one of {list(_SAMPLINGS)}, got {sampling!r}.")
        if sampling != "linear" and spec["min"] <= 0:
            raise ValueError(f"{where}: {sampling} sampling needs \"min\" > 0, got {spec['min']}.")
        if "step" in spec:
            step = spec["step"]
            if isinstance(step, bool) or not isinstance(step, number) or not step > 0:
                raise ValueError(f"{where}: \"step\" must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}.")
            if sampling != "linear" and not step > 1:
                example = "32, 64, 128..." if sampling == "log" else "log's 32, 64, 128... mirrored towards max"
                raise ValueError(
                    f"{where}: with {sampling} sampling \"step\" is a factor (e.g. 2: {example}), "
                    f"so it must be above 1, got {step!r}."
                )
            reach = spec["max"] - spec["min"] if sampling == "linear" else spec["max"] / spec["min"]
            if step > reach * (1 + 1e-9):
                raise ValueError(
                    f"{where}: \"step\" {step!r} goes past \"max\" from \"min\", so only {spec['min']!r} "
                    "would ever be tried; use a smaller step, or {\"type\": \"fixed\"}."
                )
        if kind == "float" and hint is not float and float not in typing.get_args(hint):
            raise ValueError(f"{where}: {key} is {_type_name(hint)}, so a \"float\" range cannot set it; use \"int\" or \"choice\".")
        candidates = [spec["min"], spec["max"]]
    elif kind == "boolean":
        candidates = [True, False]
    else:
        candidates = [spec["value"]]

    for value in candidates:
        if not _accepts(hint, value):
            raise ValueError(f"{where}: {key} takes {_type_name(hint)}, but the range holds {value!r}.")
        try:
            dataclasses.replace(TrainConfig(data="-"), **{key: value}).validate()
        except ValueError as error:
            raise ValueError(f"{where}: the value {value!r} is out of range ({error}).") from None


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a JSON value fits a `TrainConfig` field's type; `null` never does here."""
    if value is None:
        return False  # keras-tuner ranges hold numbers, strings and booleans only
    args = typing.get_args(hint) or (hint,)
    if isinstance(value, bool):
        return bool in args
    if isinstance(value, int):
        return int in args or float in args
    if isinstance(value, float):
        return float in args
    if isinstance(value, str):
        return str in args
    return False


def _type_name(hint: Any) -> str:
    names = [a.__name__ for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    return " or ".join(names)


def declare_hyperparameters(hp: keras_tuner.HyperParameters, space: Mapping[str, dict]) -> dict[str, Any]:
    """Registers `space` on `hp` and returns the values of this trial, typed as `TrainConfig` wants.

    Example:

    ```python
    hp = keras_tuner.HyperParameters()
    declare_hyperparameters(hp, {"units": {"type": "choice", "values": [32, 64]}})  # {"units": 32}
    ```
    """
    values = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "choice":
            value = hp.Choice(name, spec["values"], ordered=spec.get("ordered"))
        elif kind == "int":
            value = hp.Int(name, spec["min"], spec["max"], step=spec.get("step"), sampling=spec.get("sampling", "linear"))
        elif kind == "float":
            grid = compat.linear_float_grid(spec["min"], spec["max"], spec.get("step"), spec.get("sampling", "linear"))
            if grid is not None:
                value = hp.Choice(name, grid, ordered=True)
            else:
                value = hp.Float(name, spec["min"], spec["max"], step=spec.get("step"), sampling=spec.get("sampling", "linear"))
        elif kind == "boolean":
            value = hp.Boolean(name)
        else:
            value = hp.Fixed(name, spec["value"])
        values[name] = typed_value(name, value)
    return values


def typed_value(name: str, value: Any) -> Any:
    """A trial's value as the `TrainConfig` field `name` takes it.

    keras-tuner hands back numpy scalars (the Bayesian oracle) and a `choice`
    of `true`/`false` as `1`/`0` (a bool is an int to it).

    >>> typed_value("position_embedding", 1), typed_value("units", 64.0), typed_value("dropout", 0.1 * 3)
    (True, 64, 0.3)
    """
    value = value.item() if hasattr(value, "item") else value
    args = typing.get_args(_FIELD_TYPES[name]) or (_FIELD_TYPES[name],)
    if bool in args:
        return bool(value)
    if int in args and float not in args:
        return int(round(value))
    if float in args and isinstance(value, float):
        # A search begun before its float steps were choices draws 0.1 * 3 from keras-tuner.
        return compat.without_binary_noise(value)
    return value


# -- data prepared once ---------------------------------------------------------


def prepare_tuning_data(config: TrainConfig, progress: bool = True, build_cache: bool = True) -> RunData:
    """Loads the data and builds the vocabulary once; with `cache_features`, builds the cache too.

    The cache is built (or reused) here, before the search, with the base
    configuration's backbone; trials then read features and never run it.
    With `build_cache=False` (a worker other than the chief) it waits for the
    cache another process builds instead.

    Example:

    ```python
    config = TrainConfig(data="synthetic", cache_features=True).resolved()
    data = prepare_tuning_data(config)
    ```
    """
    data = prepare_data(config)
    if config.cache_features:
        model = build_captioner(config, data.vocabulary, data.normalization, reward=data.reward)
        data = with_feature_cache(data, config, model, build=build_cache, progress=progress)
        del model
        keras.backend.clear_session()
    return data


# -- the hypermodel -------------------------------------------------------------


class CaptionerHyperModel(keras_tuner.HyperModel):
    """Builds and trains a `Captioner` per trial: `config` with the trial's values in it.

    Args:
        config: the base settings (resolved); the search space overrides some of them.
        data: the data every trial trains on (`prepare_tuning_data(config)`).
        search_space: a validated search space (`load_search_space`).
        objective: `"val_loss"`, `"val_bleu4"` or `"val_cider"` (the latter two add
            `kcap.training.validation_captioning.ValidationCaptioning`).

    Example:

    ```python
    hypermodel = CaptionerHyperModel(config, prepare_tuning_data(config), load_search_space())
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_loss", max_trials=4, directory="tune")
    tuner.search(epochs=2)
    ```
    """

    def __init__(
        self,
        config: TrainConfig,
        data: RunData,
        search_space: Mapping[str, dict],
        objective: str = "val_loss",
        name: str | None = "captioner",
        tunable: bool = True,
    ):
        super().__init__(name=name, tunable=tunable)
        self.config = config
        self.data = data
        self.search_space = validate_search_space(dict(search_space))
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {tuple(OBJECTIVES)}, got {objective!r}.")
        self.objective = objective
        if not data.dataset.subset("val"):
            raise ValueError(
                f"{data.dataset.source} has no validation images, and the search ranks trials by {objective}. "
                "Give the data a val split (or --val-fraction > 0)."
            )

    def trial_config(self, hp: keras_tuner.HyperParameters) -> TrainConfig:
        """The base configuration with this trial's values (declaring them on `hp`)."""
        values = declare_hyperparameters(hp, self.search_space)
        config = dataclasses.replace(self.config, **values)
        config.validate()
        return config

    def build(self, hp: keras_tuner.HyperParameters) -> Captioner:
        config = self.trial_config(hp)
        model = build_captioner(
            config, self.data.vocabulary, self.data.normalization, training_steps(config, self.data), self.data.reward
        )
        # Optimizer slots exist from the start, so the weights keras-tuner loads back
        # (get_best_models, Hyperband's next round) bring the optimizer state with them.
        model.optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: Captioner, *args, **kwargs) -> keras.callbacks.History:
        """Trains `model` on the prepared data; `epochs`/`initial_epoch` come from the tuner.

        keras-tuner passes its callbacks (checkpointing the best epoch,
        TensorBoard with the trial's log folder) in `kwargs["callbacks"]`.
        """
        if args or {"x", "y", "validation_data"} & set(kwargs):
            raise TypeError(
                "CaptionerHyperModel trains on the data it was built with; "
                "call tuner.search(epochs=..., callbacks=...) without data arguments."
            )
        config = self.trial_config(hp)
        epochs = int(kwargs.pop("epochs", config.epochs))
        initial_epoch = int(kwargs.pop("initial_epoch", 0))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        arguments = fit_arguments(config, self.data, epochs, initial_epoch)
        if self.objective != "val_loss":
            # First: keras-tuner's checkpoint and TensorBoard callbacks read val_bleu4/val_cider from the same logs.
            callbacks.insert(0, validation_captioning(config, self.data))
        return model.fit(**arguments, callbacks=callbacks, **kwargs)
