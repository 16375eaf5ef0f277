"""ONNX export of pruned models, optionally int8 (ONNX Runtime quantization), zeros counted.

A model with live masks is exported as a finalized copy (the masks baked in; the model itself is
left as it was) and a warning says so. A model from ``sparse_runtime`` is exported as the dense
layers its float kernels compute (ONNX has no sparse kernels; the zeros stay in the file); its int8
kernels have no ONNX form and are refused. After export the weights in the file are counted, so the
returned :class:`ExportInfo` proves the zeros survived (int8 included: symmetric weight
quantization maps 0.0 to 0), and an int8 export that quantized nothing is an error, not a file.
The file appears only when everything succeeded (written beside it, then renamed).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from prunekit._compat import old_kwargs
from prunekit._io import atomic_path, check_output_path
from prunekit.deploy.layers import dense_equivalent
from prunekit.inputs import modes, split
from prunekit.masks import finalize, masks

__all__ = ["export_onnx", "ExportInfo", "count_onnx_weights", "count_int8_weights"]


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


def count_int8_weights(path: str) -> int:
    """Elements of int8 initializers with two or more dimensions (quantized weight matrices)."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(path)
    return sum(int(math.prod(i.dims)) for i in model.graph.initializer
               if len(i.dims) >= 2 and i.data_type in (TensorProto.INT8, TensorProto.UINT8))


def _outputs(out: Any) -> tuple[list[str], list[int]]:
    """Graph output names and ranks for a model's output: a dict's (or ModelOutput's) keys, else
    ``output``, ``output_1``, ... in the exporter's flattening order."""
    if isinstance(out, torch.Tensor):
        return ["output"], [out.dim()]
    if isinstance(out, dict):
        items = [(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
        return [str(k) for k, _ in items], [v.dim() for _, v in items]
    if isinstance(out, (tuple, list)):
        flat = [v for v in out if isinstance(v, torch.Tensor)]
        return ["output"] + [f"output_{i}" for i in range(1, len(flat))], [v.dim() for v in flat]
    return ["output"], [0]


class _Keywords(nn.Module):
    """Calls ``model(**dict(zip(keys, args)))``: keyword inputs as positional ones, for the exporter."""

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *args):
        return self.model(**dict(zip(self.keys, args)))


def _float32(example: Any) -> Any:
    if isinstance(example, torch.Tensor):
        return example.float() if example.is_floating_point() else example
    if isinstance(example, dict):
        return {k: _float32(v) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(_float32(v) for v in example)
    return example


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    quantize: str | None = None,
    data: Iterable[Any] | None = None,
    opset: int = 17,
    input_names: list[str] | None = None,
    dynamic_batch: bool = True,
    **deprecated,
) -> ExportInfo:
    """Export ``model`` to ONNX at ``path``, optionally quantized to int8.

    Args:
        model: the model; not changed (with live masks a finalized copy is exported, with a warning;
            a ``to_sparse_runtime`` model is exported as the dense layers it computes).
        example_inputs: one input (see :mod:`prunekit.inputs`): a tensor, a tuple of positional
            tensors, or a dict of keyword tensors (their keys become the graph's input names).
        path: output ``.onnx`` file; written only when the export succeeds.
        quantize: None (the model's own dtype), ``"int8"`` (dynamic: int8 weights, activations
            quantized at run time) or ``"int8-static"`` (QDQ: the MatMul, Gemm and Conv layers with
            int8 weights and activations calibrated on ``data``; embeddings and the rest stay float).
            ONNX Runtime quantizes float32 graphs, so a float16/bfloat16/float64 model is exported
            as a float32 copy first (with a warning).
        data: calibration inputs, each like ``example_inputs``, for ``"int8-static"``
            (``calibration=`` is its deprecated name).
        opset: ONNX opset (13-14 for DeepSparse 1.8).
        input_names: names of the graph inputs (default: the dict's keys, or ``input_0``, ...).
        dynamic_batch: make dim 0 of every input dynamic.

    Returns:
        :class:`ExportInfo` with the size and the zeros counted in the file.

    Raises:
        ValueError: unknown ``quantize``, ``"int8-static"`` without ``data``, int8 kernels from
            ``to_sparse_runtime(int8=True)``, or an int8 export in which no weight was quantized. No
            file is written then.

    Example:
        >>> info = prunekit.deploy.export_onnx(pruned, torch.randn(1, 784), "model.onnx", quantize="int8")
        >>> info.sparsity
        0.92
    """
    if quantize not in (None, "int8", "int8-static"):
        raise ValueError(f"quantize={quantize!r} is unknown; use None, 'int8' or 'int8-static'")
    data = old_kwargs("export_onnx", deprecated, {"calibration": "data"}).get("data", data)
    if quantize == "int8-static" and data is None:
        raise ValueError("quantize='int8-static' needs data=<a few example inputs> to calibrate activations")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(opset, int) or isinstance(opset, bool) or not 7 <= opset <= 25:
        raise ValueError(f"opset={opset!r} must be an int ONNX opset, e.g. 17")
    path = check_output_path(path, "path")
    model = dense_equivalent(model, "export")
    if masks(model):
        warnings.warn("the model has live masks: exporting a finalized copy (masks baked in); "
                      "call prunekit.finalize(model) first to silence this", stacklevel=2)
        model = finalize(copy.deepcopy(model))
    if quantize is not None:
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if dtypes - {torch.float32}:
            warnings.warn(f"quantize={quantize!r}: the model holds {sorted(str(d) for d in dtypes)}; ONNX Runtime "
                          "quantizes float32 graphs, so a float32 copy is exported and quantized", stacklevel=2)
            model = copy.deepcopy(model).float()
            example_inputs = _float32(example_inputs)
            data = None if data is None else [_float32(c) for c in data]
    args, kwargs = split(example_inputs)
    if kwargs:
        # keyword inputs as positional graph inputs: the exporter binds keywords to the model's signature,
        # which breaks models whose forward is wrapped (Hugging Face passes use_cache itself)
        keys = list(kwargs)
        model, args = _Keywords(model, keys), tuple(kwargs.values())
        names = input_names or keys
    else:
        names = input_names or [f"input_{i}" for i in range(len(args))]
    with modes(model):  # eval for the export; every module's own mode comes back afterwards
        try:
            with torch.no_grad():
                outputs = model(*args)
        except Exception as e:
            raise ValueError(f"the model does not run on example_inputs: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e
        output_names, ranks = _outputs(outputs)
        axes = None
        if dynamic_batch:  # batch everywhere; the sequence too where inputs are token ids (integer, 2+ dims)
            sequence = any(not a.is_floating_point() and a.dim() >= 2 for a in args if isinstance(a, torch.Tensor))
            axes = {n: {0: "batch", **({1: "sequence"} if sequence and not a.is_floating_point() and a.dim() >= 2 else {})}
                    for n, a in zip(names, args) if isinstance(a, torch.Tensor) and a.dim() >= 1}
            axes.update({n: {0: "batch", **({1: "sequence"} if sequence and r >= 3 else {})}
                         for n, r in zip(output_names, ranks) if r >= 1})
        mha = getattr(torch.backends, "mha", None)
        switch = hasattr(mha, "set_fastpath_enabled")
        fastpath = mha.get_fastpath_enabled() if switch else None
        with tempfile.TemporaryDirectory(prefix="prunekit-onnx-") as scratch, atomic_path(path, "path") as out:
            target = out if quantize is None else os.path.join(scratch, "fp32.onnx")
            try:
                if switch:  # nn.MultiheadAttention's eval fast path is one fused op the ONNX exporter cannot write
                    mha.set_fastpath_enabled(False)
                with torch.no_grad():
                    torch.onnx.export(model, args, target, input_names=names, output_names=output_names,
                                      dynamic_axes=axes, opset_version=opset, dynamo=False)
            finally:
                if switch:
                    mha.set_fastpath_enabled(fastpath)
            if quantize == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(target, out, weight_type=QuantType.QInt8)
            elif quantize == "int8-static":
                _quantize_static(target, out, names, data)
            if quantize is not None and count_int8_weights(out) == 0:
                raise ValueError(f"quantize={quantize!r} quantized no weight of this model (ONNX Runtime quantizes "
                                 "MatMul/Gemm/Conv weights); no file was written. Export without quantize")
            weights, nonzeros = count_onnx_weights(out)
    return ExportInfo(path, os.path.getsize(path), weights, nonzeros, quantize)


def _quantize_static(src: str, dst: str, names: list[str], data: Iterable[Any]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            batch = next(self.it, None)
            if batch is None:
                return None
            args, kwargs = split(batch)
            values = kwargs.values() if kwargs else args
            return {n: t.numpy() for n, t in zip(names, values)}

    # Only the layers that hold the (pruned) weights: quantizing everything ONNX Runtime can (embedding
    # Gathers, Adds, Transposes) made DeepSparse 1.8 abort on the file (an assertion in its Gather),
    # and is not what prunekit's int8 kernels compute either.
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                    extra_options={"WeightSymmetric": True})
