"""What `kcap tune` offers, kept apart from keras-tuner so that `kcap --help` does not import it."""

from __future__ import annotations

from pathlib import Path

TUNERS = ("random", "hyperband", "bayesian")
OBJECTIVES = {"val_loss": "min", "val_bleu4": "max", "val_cider": "max"}  # each with the direction that is better
DEFAULT_SEARCH_SPACE = Path(__file__).with_name("search_space.json")
