"""kcap: train, tune and ship Show-Attend-and-Tell image captioners, the Keras way."""

import os

# kcap's data pipeline, decoding loops and export are TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
