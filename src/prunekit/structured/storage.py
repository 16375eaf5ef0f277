"""Save a structurally pruned model and rebuild it from a fresh instance of its class.

Structurally pruned models use prunekit's one file format (:func:`prunekit.save` /
:func:`prunekit.load`): the tensors, plus a ``structured`` section with every module's size
attributes (``in_features``, ``out_channels``, ``groups``, ``num_heads``...) and the classes prunekit
switched (head-pruned ``nn.MultiheadAttention``). Loading builds nothing from the file but tensors:
the caller makes the model (``torchvision.models.resnet50()``, ``BertModel(config)``), and loading
resizes its tensors and attributes to the file's, then copies the weights. ``prune_channels``
marks the model it shrinks, so ``prunekit.save`` records the sizes without being told.

:func:`save` / :func:`load` here are deprecated spellings of the same thing (``load`` took its
arguments in the opposite order) and go in prunekit 0.3; files written by older versions (format
``prunekit-structured/1``) still load.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch
from torch import nn

from prunekit.structured.attention import HeadPrunedMultiheadAttention
from prunekit.structured.slicing import HEAD_ATTRS

__all__ = ["save", "load", "size_attrs", "resize_"]

SIZE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
              "normalized_shape", "num_channels", "embedding_dim", "num_parameters", *HEAD_ATTRS)


def size_attrs(model: nn.Module) -> dict:
    """``{"attrs": {module: {attr: size}}, "classes": {module: class name}}`` of ``model``."""
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
    return {"attrs": attrs, "classes": classes}


def resize_(model: nn.Module, sizes: dict, shapes: dict[str, torch.Size]) -> Callable[[], None]:
    """Set ``model``'s size attributes to ``sizes`` and give each tensor named in ``shapes`` a new,
    uninitialised tensor of that shape (the caller fills it). Returns a function that undoes it all.

    Raises:
        ValueError: ``sizes`` names a module ``model`` does not have (nothing is changed then).
    """
    modules = dict(model.named_modules())
    unknown = [n for n in list(sizes["attrs"]) + list(sizes["classes"]) if n not in modules]
    if unknown:
        raise ValueError(f"the file's sizes name modules this model does not have: {unknown[:5]}; load it into "
                         "an instance built like the saved one")
    undo: list[Callable[[], None]] = []

    def remember(store, key):
        old = store[key]
        undo.append(lambda: store.__setitem__(key, old))

    for name, values in sizes["attrs"].items():
        m = modules[name]
        for a, v in values.items():
            if hasattr(m, a):
                undo.append(lambda m=m, a=a, old=getattr(m, a): object.__setattr__(m, a, old))
            object.__setattr__(m, a, tuple(v) if isinstance(v, list) else v)
    for name in sizes["classes"]:
        m = modules[name]
        if type(m) is nn.MultiheadAttention:
            undo.append(lambda m=m, cls=type(m): setattr(m, "__class__", cls))
            m.__class__ = HeadPrunedMultiheadAttention
    for mname, m in modules.items():
        prefix = f"{mname}." if mname else ""
        for store, make in ((m._parameters, lambda p, s: nn.Parameter(torch.empty(s, dtype=p.dtype),
                                                                       requires_grad=p.requires_grad)),
                            (m._buffers, lambda b, s: torch.empty(s, dtype=b.dtype))):
            for n, t in list(store.items()):
                shape = shapes.get(prefix + n)
                if t is not None and shape is not None and t.shape != shape:
                    remember(store, n)
                    store[n] = make(t, shape)

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def save(model: nn.Module, path: str | os.PathLike) -> str:
    """Deprecated: use :func:`prunekit.save` (the same file; it records the sizes by itself for models
    that ``prune_channels`` shrank). Writes ``model``'s weights and pruned sizes to ``path``; returns it.

    Example:
        >>> prunekit.structured.prune_channels(model, x, sparsity=0.5)
        >>> prunekit.structured.save(model, "small.safetensors")
        >>> small = prunekit.structured.load(torchvision.models.resnet50(), "small.safetensors")
    """
    from prunekit.deploy.storage import save as save_file

    warnings.warn("prunekit.structured.save is deprecated and goes in prunekit 0.3: use prunekit.save(model, path), "
                  "which writes the same file", DeprecationWarning, stacklevel=2)
    return save_file(model, path).path


def load(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Deprecated: use :func:`prunekit.load` (``load(path, model)``: note the argument order).

    Resizes a fresh ``model`` to the pruned sizes in ``path`` and loads its weights; returns ``model``.
    Changes: ``model``'s parameters, buffers and size attributes (in place). Nothing is unpickled.

    Raises:
        ValueError: the file is not a prunekit file, or does not fit ``model`` (different parameter
            names); ``model`` is left unchanged in that case.
    """
    from prunekit.deploy.storage import load as load_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"structured.load takes (model, path); model must be a torch.nn.Module, got "
                        f"{type(model).__name__}. prunekit.load takes (path, model)")
    warnings.warn("prunekit.structured.load(model, path) is deprecated and goes in prunekit 0.3: use "
                  "prunekit.load(path, model)", DeprecationWarning, stacklevel=2)
    return load_file(path, model, strict=strict)
