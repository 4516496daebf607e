"""Training: the run configuration, the run directory, callbacks and the fit loop."""
