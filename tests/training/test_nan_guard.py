"""A loss that becomes NaN stops training with a message, and leaves no NaN model or epoch behind."""

import pytest

from faults import SYNTHETIC_FLAGS, completed_epochs, run_kcap


@pytest.mark.slow
def test_a_nan_loss_stops_training_cleanly_with_a_message(tmp_path):
    run = tmp_path / "run"
    flags = [f for f in SYNTHETIC_FLAGS]
    flags[flags.index("--learning-rate") + 1] = "1e12"  # diverges in the first steps
    result = run_kcap("train", "--run-dir", str(run), "--epochs", "2", *flags)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "kcap train: error: Training stopped in epoch 1: the loss became nan" in result.stderr
    assert "--clipnorm" in result.stderr and "Traceback" not in result.stderr
    # No model with NaN weights is left as the run's result, and no checkpoint of the NaN epoch.
    assert not (run / "model.keras").exists() and not (run / "checkpoints" / "best.keras").exists()
    assert completed_epochs(run) == 0
    # Nor is the stopped epoch listed as finished (history.json would also not be valid JSON with NaN).
    assert not (run / "history.json").exists()
