"""The Keras tests again on the TensorFlow backend, and prunekit.keras where PyTorch is not installed."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed")


def _env(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src"), **extra}


@pytest.mark.slow
@needs_tf
@pytest.mark.skipif(keras.backend.backend() != "torch", reason="this test starts the TensorFlow run from the torch one")
def test_keras_tests_pass_on_the_tensorflow_backend():
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE), "-k", "not test_keras_tests_pass"],
        cwd=ROOT, env=_env(KERAS_BACKEND="tensorflow"), capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout.splitlines()[-1], out.stdout[-500:]


NO_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):  # as if PyTorch were not installed: importing it fails
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
import numpy as np, keras, prunekit.keras as pk
x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
pruned = pk.prune_low_magnitude(model, pk.PolynomialDecay(0.0, 0.5, 0, 4, frequency=1))
pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
pruned.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[pk.UpdatePruningStep()])
print(round(pk.sparsity_report(pk.strip_pruning(pruned)).sparsity, 2), "torch" in sys.modules)
"""


@pytest.mark.slow
@needs_tf
def test_prunekit_keras_works_without_torch():
    out = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=ROOT, env=_env(KERAS_BACKEND="tensorflow"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["0.5", "False"]
