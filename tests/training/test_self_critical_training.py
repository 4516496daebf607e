"""`kcap train --objective cider --init-from RUN`: a self-critical stage after a cross-entropy run."""

import json

import keras
import numpy as np
import pytest

from kcap.training import trainer
from kcap.training.config import TrainConfig


@pytest.mark.slow
def test_a_self_critical_run_killed_mid_epoch_resumes_and_finishes_its_epochs(trained_run, tmp_path, monkeypatch):
    config = TrainConfig(
        data="synthetic", training_objective="cider", init_from=str(trained_run), epochs=2, batch_size=32,
        learning_rate=1e-4, samples_per_image=2, val_captions=2, scst_cross_entropy=0.5, sample_max_length=4,
    )

    class Killed(Exception):
        pass

    class KillMidEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:  # one of its two batches done
                raise Killed

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    callbacks = trainer._callbacks
    monkeypatch.setattr(trainer, "_callbacks", lambda *args: [*callbacks(*args), KillMidEpoch()])
    with pytest.raises(Killed):
        trainer.train(config, tmp_path / "scst", verbose=0)
    monkeypatch.setattr(trainer, "_callbacks", callbacks)
    history = trainer.train(config, tmp_path / "scst", verbose=0)["epochs"]

    assert [e["epoch"] for e in history] == [1, 2]
    assert all(np.isfinite(e["loss"]) and e["reward"] >= 0 and "val_cider" in e and "val_bleu4" in e for e in history)
    # The stage is the first run's model, vocabulary and splits, trained on by the stage's own settings.
    saved = json.loads((tmp_path / "scst" / "config.json").read_text())["settings"]
    first = json.loads((trained_run / "config.json").read_text())["settings"]
    assert saved["units"] == first["units"] and saved["epochs"] == 2 and saved["learning_rate"] == 1e-4
    assert saved["scst_cross_entropy"] == 0.5 and saved["sample_max_length"] == 4
    for name in ("vocab.json", "splits.json"):
        assert (tmp_path / "scst" / name).read_text() == (trained_run / name).read_text()
    assert (tmp_path / "scst" / "model.keras").is_file()
