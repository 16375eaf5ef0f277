"""Keras tests run in this process on the PyTorch backend (already loaded for the rest of the suite);
tests/keras/test_backends.py re-runs this folder under the TensorFlow backend in a subprocess."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return x, y
