"""``to_tflite``: a pruned Keras 3 model as a TensorFlow Lite flatbuffer (float, dynamic-range int8 or
full int8), with TFLite's sparse weight encoding on request."""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable

import keras

from prunekit._io import check_output_path, write_bytes

__all__ = ["to_tflite"]

QUANTIZE = (None, "dynamic", "int8")


def to_tflite(
    model,
    path,
    quantize: str | None = None,
    representative_data: Callable[[], Iterable] | Iterable | None = None,
    sparse: bool = False,
) -> int:
    """Convert ``model`` to TFLite and write it to ``path`` (atomically). Changes nothing in ``model``;
    pruning wrappers are stripped from a copy first.

    Args:
        model: a Keras 3 model on the TensorFlow backend (``KERAS_BACKEND=tensorflow``).
        path: the ``.tflite`` file to write.
        quantize: ``None`` (float32), ``"dynamic"`` (int8 weights, float activations) or ``"int8"``
            (int8 weights and activations, calibrated on ``representative_data``; float input/output).
        representative_data: for ``"int8"``: an array of input samples (calibrated one by one, at most
            500), a list of batches, or a function returning an iterable of batches.
        sparse: ask the converter for TFLite's sparse weight encoding (``EXPERIMENTAL_SPARSITY``): a
            smaller file, but TFLite's default XNNPACK delegate refuses some sparse-encoded files
            (dynamic-range int8 ones here), which then need
            ``tf.lite.Interpreter(..., experimental_op_resolver_type=BUILTIN_WITHOUT_DEFAULT_DELEGATES)``.

    Returns:
        The file's size in bytes.

    Example:
        >>> prunekit.keras.to_tflite(stripped, "model.tflite", quantize="dynamic")
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"to_tflite needs the TensorFlow backend (this process runs Keras on {keras.backend.backend()!r}): "
            "set KERAS_BACKEND=tensorflow before importing keras"
        )
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a Keras 3 model, got {type(model).__name__}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize={quantize!r}: use None (float), 'dynamic' or 'int8'")
    if quantize == "int8" and representative_data is None:
        raise ValueError("quantize='int8' needs representative_data: a few batches of real input for calibration")
    path = check_output_path(path, "path")
    import tensorflow as tf

    from prunekit.keras.callbacks import wrappers
    from prunekit.keras.strip import strip_pruning
    from prunekit.keras.wrapper import _is_clonable

    if wrappers(model) and _is_clonable(model):
        model = strip_pruning(model)
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        model.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        optimizations = []
        if quantize is not None:
            optimizations.append(tf.lite.Optimize.DEFAULT)
        if sparse:
            optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        converter.optimizations = optimizations
        if quantize == "int8":
            batches = representative_data
            if hasattr(batches, "shape") and not callable(batches):  # one array of samples
                batches = [batches[i:i + 1] for i in range(min(len(batches), 500))]

            def dataset():
                for x in batches() if callable(batches) else batches:
                    yield [tf.convert_to_tensor(x, dtype=tf.float32)]

            converter.representative_dataset = dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        data = converter.convert()
    write_bytes(path, data, "path")
    return len(data)
