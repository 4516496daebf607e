"""Evaluation: caption metrics and scoring a run on a split."""
