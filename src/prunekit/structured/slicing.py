"""Applying a plan: every coupled parameter and buffer is sliced to the kept units, and the attributes
``forward`` reads (``in_features``, ``out_channels``, ``groups``, ``num_features``,
``normalized_shape``, head counts...) follow. Everything changed is recorded in a :class:`Backup`,
so a rebuild that fails its check is put back exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.structured.attention import shrink_heads

__all__ = ["Backup", "apply", "HEAD_ATTRS"]

HEAD_ATTRS = ("num_heads", "num_attention_heads", "num_key_value_heads", "n_heads", "n_head", "all_head_size",
              "num_kv_heads", "inner_dim")


class Backup:
    """Everything a rebuild changes, to put back on failure."""

    def __init__(self):
        self.items = []

    def attr(self, obj, name):
        self.items.append(("attr", obj, name, getattr(obj, name)))

    def restore(self):
        for kind, obj, name, value in reversed(self.items):
            if kind == "attr":
                if name in getattr(obj, "_parameters", {}):
                    obj._parameters[name] = value
                elif name in getattr(obj, "_buffers", {}):
                    obj._buffers[name] = value
                else:
                    object.__setattr__(obj, name, value)


def _holders(model: nn.Module):
    """(module, attr name, is_param) for every parameter/buffer slot, shared ones included."""
    for mname, m in model.named_modules(remove_duplicate=False):
        for n, p in m._parameters.items():
            if p is not None:
                yield (f"{mname}.{n}" if mname else n), m, n, True
        for n, b in m._buffers.items():
            if b is not None:
                yield (f"{mname}.{n}" if mname else n), m, n, False


def apply(model: nn.Module, chosen, convs: dict, backup: Backup) -> list:
    removed: dict[tuple[str, int], set] = {}
    for g, units in chosen:
        for key, idx in g.index.items():
            removed.setdefault(key, set()).update(idx[units].reshape(-1).tolist())
    tensors = {}
    for fqn, m, n, is_param in _holders(model):
        tensors.setdefault(id(m._parameters[n] if is_param else m._buffers[n]), []).append((fqn, m, n, is_param))
    by_name = {fqn: obj_id for obj_id, holders in tensors.items() for fqn, *_ in holders}
    per_tensor: dict[int, dict[int, set]] = {}
    for (fqn, dim), idx in removed.items():
        per_tensor.setdefault(by_name[fqn], {}).setdefault(dim, set()).update(idx)
    changes = []
    old_shapes = {}
    for obj_id, dims in per_tensor.items():
        holders = tensors[obj_id]
        fqn, m, n, is_param = holders[0]
        old = m._parameters[n] if is_param else m._buffers[n]
        new = old.detach()
        for dim, idx in sorted(dims.items()):
            keep = torch.tensor(sorted(set(range(new.shape[dim])) - idx), dtype=torch.long)
            new = new.index_select(dim, keep)
        new = new.clone()
        if is_param:
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        for _, hm, hn, hp in holders:
            backup.attr(hm, hn)
            (hm._parameters if hp else hm._buffers)[hn] = new
        changes.append((fqn, tuple(old.shape), tuple(new.shape)))
        old_shapes[fqn] = tuple(old.shape)
    _update_attributes(model, convs, chosen, old_shapes, backup)
    return changes


def _set(backup, obj, name, value):
    backup.attr(obj, name)
    object.__setattr__(obj, name, value)


def _update_attributes(model, convs, chosen, old_shapes, backup) -> None:
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        w = getattr(m, "weight", None) if isinstance(getattr(m, "weight", None), torch.Tensor) else None
        if isinstance(m, nn.Linear) and w is not None:
            _set(backup, m, "in_features", w.shape[1])
            _set(backup, m, "out_features", w.shape[0])
        elif isinstance(m, nn.modules.conv._ConvNd) and w is not None:
            info = convs.get(prefix + "weight", {})
            old = old_shapes.get(prefix + "weight")
            if info.get("depthwise") and old is not None:
                per_group = old[0] // m.groups
                _set(backup, m, "groups", w.shape[0] // per_group)
            if m.transposed:
                _set(backup, m, "in_channels", w.shape[0])
                _set(backup, m, "out_channels", w.shape[1] * m.groups)
            else:
                _set(backup, m, "in_channels", w.shape[1] * m.groups)
                _set(backup, m, "out_channels", w.shape[0])
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = w if w is not None else getattr(m, "running_mean", None)
            if ref is not None:
                _set(backup, m, "num_features", ref.shape[0])
        elif isinstance(m, nn.LayerNorm) and w is not None:
            _set(backup, m, "normalized_shape", (w.shape[0],))
        elif isinstance(m, nn.GroupNorm) and w is not None:
            _set(backup, m, "num_channels", w.shape[0])
        elif isinstance(m, nn.Embedding):
            _set(backup, m, "embedding_dim", m.weight.shape[1])
        elif isinstance(m, nn.PReLU):
            _set(backup, m, "num_parameters", m.weight.numel())
        elif isinstance(m, nn.MultiheadAttention) and (prefix + "in_proj_weight") in old_shapes:
            heads = m.in_proj_weight.shape[0] // (3 * m.head_dim)
            if heads != m.num_heads:
                backup.attr(m, "__class__")
                _set(backup, m, "num_heads", m.num_heads)
                shrink_heads(m, heads)
    # head counts that Hugging Face style attention modules keep as attributes
    done = set()
    for g, units in chosen:
        if g.kind != "heads":
            continue
        frac = (len(g) - len(units)) / len(g)
        for fqn, _ in g.members:
            parent = fqn.rpartition(".")[0].rpartition(".")[0]
            m = model.get_submodule(parent) if parent else model
            if id(m) in done:
                continue
            done.add(id(m))
            for a in HEAD_ATTRS:
                v = getattr(m, a, None)
                if isinstance(v, int) and not isinstance(v, bool) and isinstance(m, nn.Module) \
                        and not isinstance(m, nn.MultiheadAttention) and float(v * frac).is_integer():
                    _set(backup, m, a, int(v * frac))
