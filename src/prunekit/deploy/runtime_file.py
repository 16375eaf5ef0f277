"""Save a runtime model (what :func:`~prunekit.deploy.to_sparse_runtime` chose and packed) and load it
back ready to run, without re-timing a layer.

The file is safetensors (no pickle): the packed kernel buffers of every kernel layer, the int8
weights of PyTorch dynamic int8 layers, the model's other weights, and in its metadata a JSON
record of each layer's choice and the build it used. Loading checks every packed array before a
kernel sees it (a damaged file cannot make the C++ code read out of bounds).
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes
from torch import nn

from prunekit._io import check_input_file, check_output_path, write_bytes
from prunekit.deploy.kernels import _isa
from prunekit.deploy.kernels import load as load_kernels
from prunekit.deploy.layers import SparseConv2d, SparseLinear, SparseLinearInt8

__all__ = ["save_runtime", "load_runtime", "RUNTIME_FORMAT"]

RUNTIME_FORMAT = 1
_KEY = "prunekit_runtime"
_KERNEL_LAYERS = {"SparseLinear": SparseLinear, "SparseLinearInt8": SparseLinearInt8, "SparseConv2d": SparseConv2d}
_ATTRS = {"SparseLinear": ("in_features", "out_features"), "SparseLinearInt8": ("in_features", "out_features"),
          "SparseConv2d": ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "pad")}


def _dynamic_int8_type():
    return getattr(getattr(torch.ao.nn.quantized, "dynamic", None), "Linear", None)


def save_runtime(model: nn.Module, path: str | os.PathLike) -> dict:
    """Write ``model``, a runtime model from :func:`~prunekit.deploy.to_sparse_runtime`, to ``path``
    (safetensors), keeping every layer's choice and its packed weights. ``model`` is not changed;
    the file is written to a temporary name and renamed, so a failure leaves ``path`` as it was.

    Returns the layer record written into the file: ``{name: {"kind": ..., ...}}`` per kernel or
    int8 layer.

    Example:
        >>> fast, report = prunekit.deploy.to_sparse_runtime(pruned, tokens, threads=2)
        >>> prunekit.deploy.save_runtime(fast, "fast.safetensors")
        >>> fast = prunekit.deploy.load_runtime("fast.safetensors", build_model())   # no re-timing
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = check_output_path(path)
    dynamic = _dynamic_int8_type()
    layers, tensors, inside = {}, {}, []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, (SparseLinear, SparseLinearInt8, SparseConv2d)):
            layers[name] = {"kind": kind, "isa": m._k.isa(), **{a: getattr(m, a) for a in _ATTRS[kind]}}
            tensors.update({f"{name}.{k}": v for k, v in m._buffers.items() if v is not None})
            inside.append(name)
        elif dynamic is not None and type(m) is dynamic:
            weight, bias = m.weight(), m.bias()
            if weight.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                raise ValueError(f"layer {name!r}: dynamic int8 with {weight.qscheme()} weights is not supported; "
                                 "use prunekit.deploy.dynamic_int8 (per-tensor) or save the float model")
            layers[name] = {"kind": "DynamicInt8Linear", "in_features": m.in_features, "out_features": m.out_features,
                            "scale": float(weight.q_scale()), "zero_point": int(weight.q_zero_point())}
            tensors[f"{name}.weight_int8"] = weight.int_repr()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach()
            inside.append(name)
    if not layers:
        raise ValueError("model has no kernel or int8 layers: make it with prunekit.deploy.to_sparse_runtime "
                         "first, or save a plain model with prunekit.save")
    for key, value in model.state_dict().items():
        if not any(key.startswith(f"{n}.") for n in inside) and isinstance(value, torch.Tensor):
            tensors[key] = value
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}  # clone: tied weights share storage
    header = {"format": RUNTIME_FORMAT, "model": type(model).__qualname__, "torch": torch.__version__,
              "layers": layers}
    write_bytes(path, save_bytes(tensors, metadata={_KEY: json.dumps(header)}))
    return layers


def _header(path: str) -> dict:
    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {}
    if _KEY not in metadata:
        raise ValueError(f"path={path!r} is not a runtime file (no {_KEY!r} metadata): files from prunekit.save "
                         "load with prunekit.load; runtime files come from prunekit.deploy.save_runtime")
    header = json.loads(metadata[_KEY])
    if header.get("format", 0) > RUNTIME_FORMAT:
        raise ValueError(f"path={path!r} has runtime format {header.get('format')}; this prunekit reads format "
                         f"{RUNTIME_FORMAT} (upgrade prunekit to load it)")
    return header


def load_runtime(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """A copy of ``model`` (the same architecture as the saved one, e.g. freshly built; its weights
    are replaced) with the layers and weights saved by :func:`save_runtime`, ready to run: no layer
    is re-timed. ``model`` is not changed.

    On a CPU without what a saved choice needs, that layer is re-chosen with a warning: float
    sparse layers use the build this CPU has, sparse int8 layers without AVX-512 VNNI run their
    (same, dequantized) int8 weights through the float sparse kernel, convolutions without the
    AVX-512 build run dense, and without any kernels every sparse layer runs dense.

    Raises:
        ValueError: the file is not a runtime file, has a newer format, or does not fit ``model``
            (the message names the layer or weight and the difference).

    Example:
        >>> fast = prunekit.deploy.load_runtime("fast.safetensors", build_model())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module of the saved architecture, got {type(model).__name__}")
    path = check_input_file(path)
    header = _header(path)
    with safe_open(path, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    layers = header.get("layers")
    if not isinstance(layers, dict):
        raise ValueError(f"path={path!r}: the runtime record has no layer table (damaged file)")
    for name, entry in layers.items():
        try:
            _check_fits(model, name, entry)
            _check_arrays(name, entry, {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")})
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"layer {name!r}: the file's record of it is damaged ({type(e).__name__}: {e})") from None
    rest = {k: v for k, v in tensors.items() if not any(k.startswith(f"{n}.") for n in layers)}
    expected = {k for k in model.state_dict() if not any(k.startswith(f"{n}.") for n in layers)}
    missing, unexpected = sorted(expected - rest.keys()), sorted(rest.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"path={path!r} was saved from another model ({header.get('model')}): weights missing from the "
                         f"file {missing[:4]}, in the file but not in model {unexpected[:4]}")
    state = model.state_dict()
    for key, value in rest.items():
        if state[key].shape != value.shape:
            raise ValueError(f"path={path!r} was saved from another model: {key!r} has shape {tuple(value.shape)} in "
                             f"the file, {tuple(state[key].shape)} in model")
    model = copy.deepcopy(model)
    model.load_state_dict(rest, strict=False)
    notes = []
    for name, entry in layers.items():
        layer = _restore(name, entry, {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")},
                         notes)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer)
    if notes:
        more = f"; and {len(notes) - 8} more" if len(notes) > 8 else ""
        warnings.warn(f"load_runtime re-chose {len(notes)} layer(s) for this CPU: " + "; ".join(notes[:8]) + more,
                      stacklevel=2)
    return model.eval()


def _check_fits(model: nn.Module, name: str, entry: dict) -> None:
    """The saved layer ``name`` replaces a layer of ``model`` with the same type and sizes."""
    try:
        target = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"layer {name!r} of the file is not in model: the file was saved from another model") from None
    kind = entry.get("kind")
    conv = kind == "SparseConv2d"
    if kind not in (*_KERNEL_LAYERS, "DynamicInt8Linear"):
        raise ValueError(f"layer {name!r}: unknown kind {kind!r} in the file (this prunekit knows "
                         f"{sorted(_KERNEL_LAYERS) + ['DynamicInt8Linear']})")
    want, dims = (nn.Conv2d, ("in_channels", "out_channels")) if conv else (nn.Linear, ("in_features", "out_features"))
    if not isinstance(target, want):
        raise ValueError(f"layer {name!r} is {type(target).__name__} in model but a {want.__name__} in the file: "
                         "the file was saved from another model")
    for dim in dims:
        if getattr(target, dim) != entry[dim]:
            raise ValueError(f"layer {name!r}: {dim}={entry[dim]} in the file, {getattr(target, dim)} in model")
    if conv:
        for attr in ("kernel_size", "stride", "dilation"):
            if list(getattr(target, attr)) != list(entry[attr]):
                raise ValueError(f"layer {name!r}: {attr}={entry[attr]} in the file, {getattr(target, attr)} in model")
        pad, (kh, kw) = entry["pad"], target.kernel_size
        if len(pad) != 4 or not all(isinstance(p, int) and 0 <= p <= max(kh, kw) * max(target.dilation) for p in pad):
            raise ValueError(f"layer {name!r}: padding {pad} in the file does not fit a {kh}x{kw} kernel (damaged file)")


def _check_arrays(name: str, entry: dict, t: dict) -> None:
    """Every packed array of layer ``name`` has the dtype, length and index range the kernels rely on."""
    kind, out = entry["kind"], entry.get("out_features", entry.get("out_channels"))

    def need(key, dtype, numel=None):
        if key not in t or t[key].dtype != dtype or t[key].dim() != 1 or (numel is not None and t[key].numel() != numel):
            raise ValueError(f"layer {name!r}: {key!r} is missing or damaged in the file (need a 1-d {dtype}"
                             f"{'' if numel is None else f' of {numel} values'})")
        return t[key]

    if kind == "DynamicInt8Linear":
        w, scale, zero = t.get("weight_int8"), entry["scale"], entry["zero_point"]
        if w is None or w.dtype != torch.int8 or tuple(w.shape) != (out, entry["in_features"]):
            raise ValueError(f"layer {name!r}: 'weight_int8' is missing or damaged in the file")
        if "bias" in t:
            need("bias", torch.float32, out)
        if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0 and type(zero) is int
                and -128 <= zero <= 127):
            raise ValueError(f"layer {name!r}: scale {scale!r} / zero point {zero!r} in the file are not an int8 "
                             "quantization (damaged file)")
        return
    if entry["isa"] not in ("avx512", "portable"):
        raise ValueError(f"layer {name!r}: build {entry['isa']!r} in the file; this prunekit has 'avx512' and "
                         "'portable'")
    indptr = need("indptr", torch.int64, out + 1)
    if "bias" in t:
        need("bias", torch.float32, out)
    if kind == "SparseLinearInt8":
        cols, index = (entry["in_features"] + 3) // 4, need("groups", torch.int32)
        need("packed", torch.int32, index.numel())
        need("row_sums", torch.int32, out)
        need("scale", torch.float32, out)
    else:
        kh, kw = entry.get("kernel_size", (1, 1))
        cols, index = entry.get("in_features", entry.get("in_channels", 0) * kh * kw), need("indices", torch.int32)
        need("values", torch.float32, index.numel())
    chunks = need("chunks", torch.int64)
    ok = (int(indptr[0]) == 0 and int(indptr[-1]) == index.numel() and bool((indptr.diff() >= 0).all())
          and (index.numel() == 0 or (int(index.min()) >= 0 and int(index.max()) < cols))
          and chunks.numel() >= 2 and int(chunks[0]) == 0 and int(chunks[-1]) == out and bool((chunks.diff() > 0).all()))
    if not ok:
        raise ValueError(f"layer {name!r}: the packed rows in the file are inconsistent (damaged file)")


def _restore(name: str, entry: dict, t: dict, notes: list) -> nn.Module:
    """The layer ``entry`` describes, built from its arrays ``t`` for this CPU (``notes`` gets each re-choice)."""
    kind = entry["kind"]
    if kind == "DynamicInt8Linear":
        scale, zero = entry["scale"], entry["zero_point"]  # (q - zero) * scale quantizes back to q exactly
        with warnings.catch_warnings():  # torch's own notice that quantized tensors are deprecated (still shipped)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
            qweight = torch.quantize_per_tensor((t["weight_int8"].float() - zero) * scale, scale, zero, torch.qint8)
            layer = _dynamic_int8_type()(entry["in_features"], entry["out_features"], bias_=True, dtype=torch.qint8)
        layer.set_weight_bias(qweight, t.get("bias"))
        return layer
    saved = entry["isa"]
    isa = saved if saved == "portable" or _isa() == "avx512" else _isa()
    kernels = load_kernels(isa)
    layer = _from_arrays(_KERNEL_LAYERS[kind], entry, t, kernels)  # to_dense / int8_weight need only the arrays
    if kernels is None:
        notes.append(f"{name}: no kernels here, runs dense")
        return _dequantized(layer) if kind == "SparseLinearInt8" else layer.to_dense()
    if kind == "SparseConv2d" and not kernels.has_conv():
        notes.append(f"{name}: convolution kernels need the AVX-512 build, runs dense")
        return layer.to_dense()
    if kind == "SparseLinearInt8" and not kernels.has_vnni():
        notes.append(f"{name}: no AVX-512 VNNI here, its int8 weights run in the float sparse kernel")
        return SparseLinear(_dequantized(layer), kernels)
    if isa != saved:
        notes.append(f"{name}: saved for the {saved!r} build, this CPU runs {isa!r}")
    return layer


def _from_arrays(cls, entry: dict, t: dict, kernels) -> nn.Module:
    """A kernel layer of class ``cls`` with the saved attributes and buffers (no dense layer needed)."""
    layer = cls.__new__(cls)
    nn.Module.__init__(layer)
    for attr in _ATTRS[cls.__name__]:
        value = entry[attr]
        setattr(layer, attr, tuple(value) if isinstance(value, list) else value)
    for key, value in t.items():
        layer.register_buffer(key, value)
    if "bias" not in t:
        layer.register_buffer("bias", None)
    layer._k, layer._ops = kernels, getattr(kernels, "ops", None)
    return layer.eval()


def _dequantized(layer: SparseLinearInt8) -> nn.Linear:
    """The ``nn.Linear`` whose weights are ``layer``'s int8 weights times their row scales."""
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(layer.int8_weight().float() * layer.scale[:, None])
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear.eval()
