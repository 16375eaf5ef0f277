"""Save a structurally pruned model and rebuild it from a fresh instance of its class.

The file is plain safetensors: the state dict, plus JSON metadata with every module's size
attributes (``in_features``, ``out_channels``, ``groups``, ``num_heads``...) and the classes prunekit
switched (head-pruned ``nn.MultiheadAttention``). Loading builds nothing from the file but tensors:
the caller makes the model (``torchvision.models.resnet50()``, ``BertModel(config)``), and
:func:`load` resizes its tensors and attributes to the file's, then loads the weights.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from prunekit.structured.attention import HeadPrunedMultiheadAttention
from prunekit.structured.rebuild import HEAD_ATTRS

__all__ = ["save", "load"]

SIZE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
              "normalized_shape", "num_channels", "embedding_dim", "num_parameters", *HEAD_ATTRS)
FORMAT = "prunekit-structured/1"


def save(model: nn.Module, path: str | os.PathLike) -> str:
    """Write ``model``'s weights and pruned sizes to ``path`` (safetensors). Changes nothing.

    Example:
        >>> prunekit.structured.prune_channels(model, x, ratio=0.5)
        >>> prunekit.structured.save(model, "small.safetensors")
        >>> small = prunekit.structured.load(torchvision.models.resnet50(), "small.safetensors")
    """
    from safetensors.torch import save_file

    attrs, classes = {}, {}
    for name, m in model.named_modules():
        found = {}
        for a in SIZE_ATTRS:
            v = getattr(m, a, None)
            if isinstance(v, (int, tuple, list)) and not isinstance(v, bool):
                found[a] = list(v) if isinstance(v, (tuple, list)) else v
        if found:
            attrs[name] = found
        if isinstance(m, HeadPrunedMultiheadAttention):
            classes[name] = "HeadPrunedMultiheadAttention"
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "attrs": json.dumps(attrs), "classes": json.dumps(classes)}
    save_file(state, os.fspath(path), metadata=meta)
    return os.fspath(path)


def load(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Resize a fresh ``model`` to the pruned sizes in ``path`` and load its weights; returns ``model``.

    Changes: ``model``'s parameters, buffers and size attributes (in place). Nothing is unpickled.

    Raises:
        ValueError: the file is not a prunekit structured file, or does not fit ``model`` (different
            parameter names); ``model`` is left unchanged in that case.
    """
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a prunekit structured file (written by "
                             "prunekit.structured.save); for masks use prunekit.load")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    if strict and (missing or unexpected):
        raise ValueError(f"the file does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
                         "build the same architecture (same class and config) as the one that was saved")
    attrs, classes = json.loads(meta["attrs"]), json.loads(meta["classes"])
    modules = dict(model.named_modules())
    for name, values in attrs.items():
        m = modules.get(name)
        if m is None:
            continue
        for a, v in values.items():
            object.__setattr__(m, a, tuple(v) if isinstance(v, list) else v)
    for name in classes:
        if type(modules[name]) is nn.MultiheadAttention:
            modules[name].__class__ = HeadPrunedMultiheadAttention
    for mname, m in modules.items():
        prefix = f"{mname}." if mname else ""
        for n, p in list(m._parameters.items()):
            t = tensors.get(prefix + n)
            if p is not None and t is not None and t.shape != p.shape:
                m._parameters[n] = nn.Parameter(torch.empty(t.shape, dtype=p.dtype), requires_grad=p.requires_grad)
        for n, b in list(m._buffers.items()):
            t = tensors.get(prefix + n)
            if b is not None and t is not None and t.shape != b.shape:
                m._buffers[n] = torch.empty(t.shape, dtype=b.dtype)
    model.load_state_dict(tensors, strict=strict)
    return model
