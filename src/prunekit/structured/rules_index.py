"""Channel-trace rules for operations that move, split, pad or reduce elements (view, cat, getitem,
pad, sum, softmax, pooling...): the labels are moved the same way, so offsets stay exact.

A mixin of :class:`prunekit.structured.trace` 's labeller (``self.get``, ``self.set``, ``self.t``).
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

from prunekit.structured.ops import FIXED, FREE, SPLITTING, split_dims, varying_dims

__all__ = ["IndexRules"]


class IndexRules:
    def index(self, name, func, args, kwargs, out) -> None:
        def swap(a):
            if isinstance(a, torch.Tensor) and (a.is_floating_point() or a.is_complex() or self.labelled(a)):
                return self.get(a)
            if isinstance(a, (list, tuple)):
                return type(a)(swap(b) for b in a) if not hasattr(a, "_fields") else type(a)(*[swap(b) for b in a])
            return a

        labels = func(*swap(list(args)), **{k: swap(v) for k, v in kwargs.items()})
        self.set_tree(out, labels)
        if name in SPLITTING and isinstance(args[0], torch.Tensor):
            self.record_split(name, args, kwargs, out)

    def record_split(self, name, args, kwargs, out) -> None:
        """A dimension cut into equal pieces by size: after pruning, the pieces must still match."""
        x = args[0]
        lab = self.get(x)
        varying = varying_dims(lab)
        if not varying:
            return
        events = []
        if name in ("chunk", "split", "tensor_split", "split_with_sizes"):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) % x.dim()
            pieces = [o.shape[dim] for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
            if dim in varying and len(pieces) > 1:
                if len(set(pieces)) > 1:
                    return self.t.pin(lab, f"{name} into unequal pieces along a channel dimension")
                events.append((dim, len(pieces)))
        elif isinstance(out, torch.Tensor):
            for dim, first in split_dims(tuple(x.shape), tuple(out.shape)):
                if dim in varying:
                    events.append((dim, first))
        for dim, pieces in events:
            self.split_event(lab, dim, pieces)

    def split_event(self, lab: torch.Tensor, dim: int, pieces: int) -> None:
        rows = torch.unique(lab.movedim(dim, -1).reshape(-1, lab.shape[dim]), dim=0)
        for row in rows:
            if (row > 0).any():
                self.t.splits.append(row.reshape(pieces, -1).numpy())

    def rule_getitem(self, args, kwargs, out) -> None:
        x, idx = args[0], args[1]
        lab = self.get(x)
        self.set(out, lab[idx])
        items = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis for i in items):
            at = items.index(Ellipsis)
            items = items[:at] + (slice(None),) * (x.dim() - len(items) + 1) + items[at + 1:]
        varying = varying_dims(lab)
        for d, item in enumerate(items[: x.dim()]):
            if not isinstance(item, slice) or d not in varying or item == slice(None):
                continue
            size = x.shape[d]
            start, stop, step = item.indices(size)
            length = len(range(start, stop, step))
            if step == 1 and length and size % length == 0 and start % length == 0:
                self.split_event(lab, d, size // length)  # a piece of an equal partition (x[..., :n // 2])
            else:
                self.t.pin(lab, "a slice with fixed bounds along a channel dimension")

    def rule_setitem(self, args, kwargs, out) -> None:
        target, idx, value = args
        lab = self.get(target).clone()
        lab[idx] = self.get(value) if isinstance(value, torch.Tensor) else FIXED
        self.set(target, lab)

    def rule_pad(self, args, kwargs, out) -> None:
        x = args[0]
        pad = args[1] if len(args) > 1 else kwargs["pad"]
        lab = self.get(x)
        varying = varying_dims(lab)
        padded = {x.dim() - 1 - i // 2 for i, p in enumerate(pad) if p}
        self.tie_along(lab, [d for d in varying if d in padded])
        self.set(out, torch.nn.functional.pad(lab, pad, value=FREE))

    def reduce(self, name, args, kwargs, out) -> None:
        x = args[0]
        lab = self.get(x)
        dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], torch.Tensor) else None)
        if name in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
            return self.elementwise([args[0], args[1]], out)
        if name == "norm":
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
        keepdim = kwargs.get("keepdim", False)
        if isinstance(dim, str) or (name in ("std", "var") and isinstance(dim, bool)):
            dim = None
        dims = list(range(x.dim())) if dim is None else [d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)]
        self.tie_along(lab, [d for d in dims if d in varying_dims(lab)])
        if not dims:
            return self.set_tree(out, lab)
        red = lab.amax(dim=dims, keepdim=True)
        if not keepdim:
            red = red.reshape([s for d, s in enumerate(lab.shape) if d not in dims])
        outs, _ = tree_flatten(out)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.shape == red.shape:
                self.set(o, red)

    def along_dim(self, name, args, kwargs, out) -> None:
        x = args[0]
        lab = self.get(x)
        dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else None)
        if name == "normalize":
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 1)
        if dim is None:
            dim = -1
        d = dim % x.dim()
        if d in varying_dims(lab):
            self.tie_along(lab, [d])
        self.set_tree(out, [lab] * len(tree_flatten(out)[0]) if not isinstance(out, torch.Tensor) else lab)

    def spatial(self, x, out, name) -> None:
        lab = self.get(x)
        first = out[0] if isinstance(out, (tuple, list)) else out
        varying = varying_dims(lab)
        if x.dim() < 2 or any(d != 1 for d in varying) or first.shape[:2] != x.shape[:2]:
            return self.unknown(name, [x], out)
        rep = lab.amax(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else lab
        self.set_tree(out, [rep.expand(o.shape).contiguous() for o in tree_flatten(out)[0]])

    # -- matmul and weights ------------------------------------------------------------------------
