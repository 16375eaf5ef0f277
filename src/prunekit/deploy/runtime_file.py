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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes
from torch import nn

from prunekit._io import check_input_file, check_output_path, write_bytes
from prunekit.deploy.kernels import _isa
from prunekit.deploy.kernels import load as load_kernels
from prunekit.deploy.layers import SparseConv2d, SparseLinear, SparseLinearInt8, explicit_padding

__all__ = ["save_runtime", "load_runtime", "RUNTIME_FORMAT"]

RUNTIME_FORMAT = 1
_KEY = "prunekit_runtime"
_KERNEL_LAYERS = {"SparseLinear": SparseLinear, "SparseLinearInt8": SparseLinearInt8, "SparseConv2d": SparseConv2d}
_ATTRS = {"SparseLinear": ("in_features", "out_features"), "SparseLinearInt8": ("in_features", "out_features"),
          "SparseConv2d": ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "pad")}
# the arrays each kind of layer keeps in the file (bias where the layer has one), and no others
_ARRAYS = {"SparseLinear": {"indptr", "indices", "values", "chunks"},
           "SparseConv2d": {"indptr", "indices", "values", "chunks"},
           "SparseLinearInt8": {"indptr", "groups", "packed", "row_sums", "scale", "chunks"},
           "DynamicInt8Linear": {"weight_int8"}}
_KERNEL_TYPES = (SparseLinear, SparseLinearInt8, SparseConv2d)
_DAMAGED = "(damaged file: re-save it with prunekit.deploy.save_runtime)"


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
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: save the model it compiles
    path = check_output_path(path)
    dynamic = _dynamic_int8_type()
    if isinstance(model, _KERNEL_TYPES) or (dynamic is not None and type(model) is dynamic):
        raise ValueError(f"model is itself a {type(model).__name__}: save_runtime keeps layers inside a model; "
                         "wrap it (e.g. torch.nn.Sequential(layer)) and load it into the same wrapper")
    layers, tensors, inside = {}, {}, []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, _KERNEL_TYPES):
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


def _read(path: str) -> tuple[dict, dict]:
    """The runtime record and the arrays of the file at ``path``; ValueError naming it when it is not one."""
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            if _KEY not in metadata:
                raise ValueError(f"path={path!r} is not a runtime file (no {_KEY!r} metadata): files from "
                                 "prunekit.save load with prunekit.load; runtime files come from "
                                 "prunekit.deploy.save_runtime")
            header = json.loads(metadata[_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, json.JSONDecodeError, OSError, RuntimeError) as e:
        raise ValueError(f"path={path!r} cannot be read as a runtime file ({type(e).__name__}: {e}) {_DAMAGED}") \
            from None
    if not isinstance(header, dict) or type(header.get("format")) is not int:
        raise ValueError(f"path={path!r}: its runtime record is not an object with an integer format {_DAMAGED}")
    if header["format"] > RUNTIME_FORMAT:
        raise ValueError(f"path={path!r} has runtime format {header['format']}; this prunekit reads format "
                         f"{RUNTIME_FORMAT} (upgrade prunekit to load it)")
    if not isinstance(header.get("layers"), dict) or not header["layers"]:
        raise ValueError(f"path={path!r}: the runtime record has no layer table {_DAMAGED}")
    return header, tensors


def load_runtime(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """A copy of ``model`` (the same architecture as the saved one, e.g. freshly built; its weights
    are replaced) with the layers and weights saved by :func:`save_runtime`, ready to run: no layer
    is re-timed. ``model`` is not changed.

    On a CPU without what a saved choice needs, that layer is re-chosen with a warning: float
    sparse layers (convolutions included) use the build this CPU has, sparse int8 layers without
    AVX-512 VNNI run their (same, dequantized) int8 weights through the float sparse kernel, and
    without any kernels every sparse layer runs dense.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        FileNotFoundError: there is no file at ``path``.
        ValueError: the file is not a runtime file, is damaged, has a newer format, or does not fit
            ``model`` (the message names the layer or array and the difference); ``model`` already
            holds kernel layers (pass a freshly built model).

    Example:
        >>> fast = prunekit.deploy.load_runtime("fast.safetensors", build_model())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module of the saved architecture, got {type(model).__name__}")
    model = getattr(model, "_orig_mod", model)
    used = [n for n, m in model.named_modules() if isinstance(m, _KERNEL_TYPES)]
    if used:
        raise ValueError(f"model already holds kernel layers ({used[:3]}): pass a freshly built model of the saved "
                         "architecture (its float weights are replaced by the file's)")
    path = check_input_file(path)
    header, tensors = _read(path)
    layers = header["layers"]
    for name, entry in layers.items():
        try:
            if not isinstance(entry, dict) or not isinstance(name, str) or not name:
                raise TypeError("not a named layer record")
            _check_fits(model, name, entry)
            _check_arrays(name, entry, {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")},
                          model.get_submodule(name).bias is not None)
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"layer {name!r}: the file's record of it is damaged ({type(e).__name__}: {e}) "
                             f"{_DAMAGED}") from None
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
        if type(entry[dim]) is not int or getattr(target, dim) != entry[dim]:
            raise ValueError(f"layer {name!r}: {dim}={entry[dim]!r} in the file, {getattr(target, dim)} in model")
    if conv:
        if target.groups != 1 or target.padding_mode != "zeros":
            raise ValueError(f"layer {name!r} of model has groups={target.groups}, padding_mode="
                             f"{target.padding_mode!r}; the file's sparse convolution needs groups=1, zeros padding")
        theirs = {"kernel_size": target.kernel_size, "stride": target.stride, "dilation": target.dilation,
                  "pad": explicit_padding(target)}
        for attr, value in theirs.items():
            saved = entry[attr]
            if not isinstance(saved, list) or not all(type(v) is int for v in saved) or tuple(saved) != tuple(value):
                raise ValueError(f"layer {name!r}: {attr}={saved!r} in the file, {tuple(value)} in model")


def _check_arrays(name: str, entry: dict, t: dict, bias: bool) -> None:
    """Every packed array of layer ``name`` has the dtype, length and index range the kernels rely on;
    ``bias``: whether the model's layer has one (then the file must too, and not otherwise)."""
    kind, out = entry["kind"], entry.get("out_features", entry.get("out_channels"))
    names = _ARRAYS[kind] | ({"bias"} if bias else set())
    if set(t) != names:
        raise ValueError(f"layer {name!r}: arrays {sorted(t)} in the file, a {kind} with"
                         f"{'' if bias else 'out'} bias keeps {sorted(names)} {_DAMAGED}")

    def need(key, dtype, numel=None):
        if t[key].dtype != dtype or t[key].dim() != 1 or (numel is not None and t[key].numel() != numel):
            raise ValueError(f"layer {name!r}: array {key!r} in the file is {t[key].dtype} of shape "
                             f"{tuple(t[key].shape)}, need a 1-d {dtype}{'' if numel is None else f' of {numel} values'}"
                             f" {_DAMAGED}")
        return t[key]

    if kind == "DynamicInt8Linear":
        w, scale, zero = t["weight_int8"], entry["scale"], entry["zero_point"]
        if w.dtype != torch.int8 or tuple(w.shape) != (out, entry["in_features"]):
            raise ValueError(f"layer {name!r}: array 'weight_int8' in the file is {w.dtype} of shape {tuple(w.shape)}, "
                             f"need int8 of shape {(out, entry['in_features'])} {_DAMAGED}")
        if bias:
            need("bias", torch.float32, out)
        if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0 and type(zero) is int
                and -128 <= zero <= 127):
            raise ValueError(f"layer {name!r}: scale {scale!r} / zero point {zero!r} in the file are not an int8 "
                             f"quantization {_DAMAGED}")
        return
    if entry["isa"] not in ("avx512", "portable"):
        raise ValueError(f"layer {name!r}: build {entry['isa']!r} in the file; this prunekit has 'avx512' and "
                         "'portable' (upgrade prunekit, or re-save it with prunekit.deploy.save_runtime here)")
    indptr = need("indptr", torch.int64, out + 1)
    if bias:
        need("bias", torch.float32, out)
    if kind == "SparseLinearInt8":
        cols, index = (entry["in_features"] + 3) // 4, need("groups", torch.int32)
        packed, row_sums = need("packed", torch.int32, index.numel()), need("row_sums", torch.int32, out)
        if not bool(torch.isfinite(need("scale", torch.float32, out)).all()):
            raise ValueError(f"layer {name!r}: array 'scale' in the file holds non-finite values {_DAMAGED}")
    else:
        kh, kw = entry.get("kernel_size", (1, 1))
        cols, index = entry.get("in_features", entry.get("in_channels", 0) * kh * kw), need("indices", torch.int32)
        need("values", torch.float32, index.numel())
    chunks = need("chunks", torch.int64)
    ok = (int(indptr[0]) == 0 and int(indptr[-1]) == index.numel() and bool((indptr.diff() >= 0).all())
          and (index.numel() == 0 or (int(index.min()) >= 0 and int(index.max()) < cols))
          and chunks.numel() >= 2 and int(chunks[0]) == 0 and int(chunks[-1]) == out and bool((chunks.diff() > 0).all()))
    if not ok:
        raise ValueError(f"layer {name!r}: the packed rows in the file are inconsistent (indptr must rise from 0 to "
                         f"the number of stored entries, every index lie below {cols}, chunks rise from 0 to {out}) "
                         f"{_DAMAGED}")
    if kind == "SparseLinearInt8":  # the kernel corrects its unsigned activations with these sums
        rows = torch.repeat_interleave(torch.arange(out), indptr.diff())
        sums = torch.zeros(out, dtype=torch.int64).index_add_(0, rows, packed.view(torch.int8).reshape(-1, 4).sum(1))
        if not torch.equal(sums.to(torch.int32), row_sums):
            raise ValueError(f"layer {name!r}: array 'row_sums' in the file does not match its int8 weights {_DAMAGED}")


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
