"""Settings from a JSON file over a run's configuration: `kcap train --hparams FILE`.

The file is typically a search's `best_hyperparameters.json` (`kcap tune`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from kcap.training.config import TrainConfig
from kcap.utils.files import read_json

log = logging.getLogger("kcap")


def apply_hparams(config: TrainConfig, path: str | Path) -> TrainConfig:
    """`config` with the settings of a JSON file (e.g. a search's `best_hyperparameters.json`).

    The file is an object of `TrainConfig` settings; its values win over
    `config`'s, with a warning for each setting `config` had changed from its
    default (a flag given with `--hparams`). Unknown keys and values of the
    wrong type are errors naming the file and the key.

    Example:

    ```python
    config = apply_hparams(TrainConfig(data="synthetic"), "tune/best_hyperparameters.json")
    train(config, "runs/best")
    ```
    """
    path = Path(path)
    data = read_json(path, "Hyperparameter file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of training settings, got {type(data).__name__}.")
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; settings are TrainConfig fields: {fields}.")
    # from_json checks every value's type and names the key that is wrong.
    merged = TrainConfig.from_json({**config.to_json(), **data}, source=str(path))
    defaults, given, used = TrainConfig(data=config.data).to_json(), config.to_json(), merged.to_json()
    overridden = [k for k in data if given[k] != defaults[k] and given[k] != used[k]]
    if overridden:
        log.warning(
            "%s overrides %s given with it: training with %s.", path,
            ", ".join(f"{k}={given[k]!r}" for k in overridden), ", ".join(f"{k}={used[k]!r}" for k in overridden),
        )
    try:
        merged.validate()
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return merged
