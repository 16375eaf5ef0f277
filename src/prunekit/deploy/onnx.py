"""ONNX export of pruned models, optionally int8 (ONNX Runtime quantization), zeros counted.

A model with live masks is exported as a finalized copy (the masks baked in; the model itself is
left as it was) and a warning says so. After export the weights in the file are counted, so the
returned :class:`ExportInfo` proves the zeros survived (int8 included: symmetric weight
quantization maps 0.0 to 0).
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from prunekit.masks import finalize, masks

__all__ = ["export_onnx", "ExportInfo", "count_onnx_weights"]


@dataclass
class ExportInfo:
    """What :func:`export_onnx` wrote: ``path``, ``file_bytes``, and over the file's weight matrices
    (initializers with 2+ dims) ``weights`` and ``nonzeros``; ``quantize`` as asked."""

    path: str
    file_bytes: int
    weights: int
    nonzeros: int
    quantize: str | None

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzeros / self.weights if self.weights else 0.0


def count_onnx_weights(path: str) -> tuple[int, int]:
    """``(weights, nonzeros)`` over the initializers with two or more dimensions."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    n = nz = 0
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            arr = numpy_helper.to_array(init)
            n += arr.size
            nz += int((arr != 0).sum())
    return n, nz


def _inputs(example_inputs: Any) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    quantize: str | None = None,
    calibration: Iterable[Any] | None = None,
    opset: int = 17,
    input_names: list[str] | None = None,
    dynamic_batch: bool = True,
) -> ExportInfo:
    """Export ``model`` to ONNX at ``path``, optionally quantized to int8.

    Args:
        model: the model; not changed (with live masks a finalized copy is exported, with a warning).
        example_inputs: a tensor or a tuple of tensors for tracing.
        path: output ``.onnx`` file.
        quantize: None (fp32), ``"int8"`` (dynamic: int8 weights, activations quantized at run time)
            or ``"int8-static"`` (activations calibrated on ``calibration``).
        calibration: inputs (like ``example_inputs``) for ``"int8-static"``.
        opset: ONNX opset (13-14 for DeepSparse 1.8).
        input_names: names of the graph inputs (default ``input_0``, ``input_1``, ...).
        dynamic_batch: make dim 0 of every input dynamic.

    Returns:
        :class:`ExportInfo` with the size and the zeros counted in the file.

    Raises:
        ValueError: unknown ``quantize``, or ``"int8-static"`` without calibration.

    Example:
        >>> info = prunekit.deploy.export_onnx(pruned, torch.randn(1, 784), "model.onnx", quantize="int8")
        >>> info.sparsity
        0.92
    """
    if quantize not in (None, "int8", "int8-static"):
        raise ValueError(f"quantize={quantize!r} is unknown; use None, 'int8' or 'int8-static'")
    if quantize == "int8-static" and calibration is None:
        raise ValueError("quantize='int8-static' needs calibration=<a few example inputs>")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = os.fspath(path)
    if masks(model):
        warnings.warn("the model has live masks: exporting a finalized copy (masks baked in); "
                      "call prunekit.finalize(model) first to silence this", stacklevel=2)
        model = finalize(copy.deepcopy(model))
    inputs = _inputs(example_inputs)
    names = input_names or [f"input_{i}" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    was_training = model.training
    model.eval()
    target = path if quantize is None else os.path.join(tempfile.mkdtemp(prefix="prunekit-onnx-"), "fp32.onnx")
    mha = getattr(torch.backends, "mha", None)
    switch = hasattr(mha, "set_fastpath_enabled")
    fastpath = mha.get_fastpath_enabled() if switch else None
    try:
        if switch:  # nn.MultiheadAttention's eval fast path is one fused op the ONNX exporter cannot write
            mha.set_fastpath_enabled(False)
        with torch.no_grad():
            torch.onnx.export(model, inputs, target, input_names=names, output_names=["output"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
    finally:
        if switch:
            mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(target, path, weight_type=QuantType.QInt8)
    elif quantize == "int8-static":
        _quantize_static(target, path, names, calibration)
    weights, nonzeros = count_onnx_weights(path)
    return ExportInfo(path, os.path.getsize(path), weights, nonzeros, quantize)


def _quantize_static(src: str, dst: str, names: list[str], calibration: Iterable[Any]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            batch = next(self.it, None)
            if batch is None:
                return None
            return {n: t.numpy() for n, t in zip(names, _inputs(batch))}

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, extra_options={"WeightSymmetric": True})
