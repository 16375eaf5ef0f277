"""to_tflite: float / dynamic-range / full int8 files that run in the TFLite interpreter, zeros kept.
Runs under the TensorFlow backend (tests/keras/test_backends.py); elsewhere it checks the error."""

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from tests.keras.helpers import compile_, mlp

TF = keras.backend.backend() == "tensorflow"


@pytest.fixture
def stripped(data):
    pruned = compile_(pk.prune_low_magnitude(mlp(), pk.ConstantSparsity(0.8, 0, frequency=1)))
    pruned.fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[pk.UpdatePruningStep()])
    return pk.strip_pruning(pruned)


def interpreter(path):
    import tensorflow as tf

    it = tf.lite.Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def run(it, x):
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(out["index"])


@pytest.mark.skipif(not TF, reason="TFLite conversion needs the TensorFlow backend")
@pytest.mark.parametrize("quantize", [None, "dynamic", "int8"])
def test_tflite_runs_close_to_keras(stripped, data, tmp_path, quantize):
    x = data[0][:16]
    path = tmp_path / "m.tflite"
    calibration = data[0][:64] if quantize == "int8" else None  # an array of samples
    size = pk.to_tflite(stripped, path, quantize=quantize, representative_data=calibration)
    assert path.stat().st_size == size
    got, want = run(interpreter(path), x), stripped.predict(x, verbose=0)
    tol = 1e-4 if quantize is None else 0.15 * float(np.abs(want).max())
    assert np.abs(got - want).max() <= tol


@pytest.mark.skipif(not TF, reason="TFLite conversion needs the TensorFlow backend")
def test_tflite_float_keeps_the_zeros(stripped, tmp_path):
    path = tmp_path / "m.tflite"
    pk.to_tflite(stripped, path)
    it = interpreter(path)
    kernels = {}
    for d in it.get_tensor_details():
        try:
            a = it.get_tensor(d["index"])
        except ValueError:
            continue
        if a.ndim == 2 and a.size in (16 * 32, 32 * 2):
            kernels[a.size] = int(np.count_nonzero(a))
    want = {r.numel: r.nonzeros for r in pk.sparsity_report(stripped).rows}
    assert kernels == want


def test_tflite_errors(stripped, tmp_path):
    if not TF:
        with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
            pk.to_tflite(stripped, tmp_path / "m.tflite")
        return
    with pytest.raises(ValueError, match="quantize"):
        pk.to_tflite(stripped, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="representative_data"):
        pk.to_tflite(stripped, tmp_path / "m.tflite", quantize="int8")
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.skipif(not TF, reason="TFLite conversion needs the TensorFlow backend")
def test_sparse_encoding_is_smaller(stripped, tmp_path):
    dense = pk.to_tflite(stripped, tmp_path / "d.tflite")
    sparse = pk.to_tflite(stripped, tmp_path / "s.tflite", sparse=True)
    kernel_bytes = 4 * sum(r.numel for r in pk.sparsity_report(stripped).rows)
    assert sparse < dense - 0.4 * kernel_bytes  # 80% of the kernels are zeros; indices cost some back
