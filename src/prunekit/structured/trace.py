"""Find which channels must be removed together, by running the model once with labelled channels.

Why this method: torch.fx and torch.export fail on models with data-dependent control flow, on
many Hugging Face models and on custom Python in ``forward``; the autograd graph loses the index
arithmetic of views, ``cat`` and ``chunk``. Here the model runs eagerly under a
``TorchFunctionMode``: every tensor gets a shadow integer tensor of the same shape whose entries
say which *channel slot* each element belongs to. Index-moving operations (view, reshape, permute,
cat, chunk, getitem, roll, pad, ...) are replayed on the labels, so channel shuffles, splits with
offsets and flatten -> Linear come out exactly; element-wise operations (residual additions, gates)
tie the slots they combine; weight operations (linear, conv, norms, embedding, attention) tie
their inputs to the weight's columns and give their outputs the weight's rows. Whatever runs in
``forward`` is seen, whatever its Python looks like.

A slot is one index along one dimension of one parameter or buffer. Slots that must go together
end up in one connected component: a *unit* (a channel, a head with all its q/k/v/o rows and
columns, a group-local channel of a grouped convolution). Operations that mix channels in ways a
smaller tensor could not reproduce merge the units they mix (a normalisation over a head's
dimensions makes the whole head one unit) or pin them (model outputs, operations prunekit does not
know): a pinned unit is never removed, and :func:`prunekit.structured.groups` says why.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from prunekit.structured.macs import count_call

__all__ = ["Trace", "trace"]

FIXED = 0  # the slot every pinned slot joins
FREE = -1  # element with no channel identity (padding)

_IDENTITY = {
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "detach", "clone", "contiguous", "cpu", "cuda",
    "requires_grad", "data", "real", "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "hardtanh", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "softsign", "exp", "log", "log1p", "sqrt",
    "rsqrt", "erf", "sin", "cos", "reciprocal", "square", "clamp", "clip", "clamp_min", "clamp_max", "neg", "abs",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "sign", "floor", "ceil",
    "round", "trunc", "logsigmoid", "nan_to_num", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
    "randn_like", "fill", "zero", "tril", "triu", "positive", "exp2", "expm1", "sigmoid_", "threshold", "logit",
    "pow", "requires_grad_", "pin_memory", "bernoulli", "normal", "uniform", "silu_", "gelu_", "erfinv", "sinh", "cosh",
    "atan", "tan", "asin", "acos", "frac", "digamma", "lgamma", "rad2deg", "deg2rad",
}
_ELEMENTWISE = {
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "truediv", "floordiv", "rsub", "rmul", "rdiv",
    "rtruediv", "radd", "maximum", "minimum", "where", "masked_fill", "lerp", "addcmul", "addcdiv", "eq", "ne", "lt",
    "gt", "le", "ge", "logical_and", "logical_or", "logical_xor", "logical_not", "and", "or", "xor", "iand", "ior",
    "copy", "fmod", "remainder", "mod", "atan2", "hypot", "copysign", "rpow", "sub_", "prelu_elementwise", "max_elem",
    "min_elem", "fmax", "fmin", "isclose", "bitwise_and", "bitwise_or", "bitwise_not", "invert", "matmul_elem",
}
_INDEX = {
    "view", "reshape", "permute", "transpose", "t", "T", "mT", "H", "mH", "flatten", "unflatten", "squeeze", "unsqueeze",
    "expand", "expand_as", "repeat", "repeat_interleave", "tile", "cat", "concat", "concatenate", "stack", "hstack",
    "vstack", "split", "split_with_sizes", "chunk", "tensor_split", "unbind", "narrow", "select", "getitem",
    "index_select", "gather", "take_along_dim", "roll", "flip", "movedim", "moveaxis", "swapaxes", "swapdims",
    "channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "view_as", "reshape_as",
    "unfold", "as_strided", "diagonal", "broadcast_to", "atleast_1d", "atleast_2d", "atleast_3d", "flatten_",
}
_SPLITTING = {"view", "reshape", "unflatten", "chunk", "split", "tensor_split", "split_with_sizes"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "prod", "std", "var", "norm", "logsumexp", "argmax", "argmin",
           "all", "any", "nansum", "nanmean", "count_nonzero", "std_mean", "var_mean", "median"}
_ALONG_DIM = {"softmax", "log_softmax", "softmin", "cumsum", "cumprod", "logcumsumexp", "normalize", "cummax",
              "cummin", "sort", "argsort"}
_SPATIAL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
            "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
            "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "interpolate", "upsample", "upsample_nearest",
            "upsample_bilinear", "max_pool2d_with_indices", "max_pool1d_with_indices", "fractional_max_pool2d",
            "adaptive_max_pool2d_with_indices", "grid_sample"}
_IGNORE = {"size", "dim", "numel", "shape", "dtype", "device", "is_floating_point", "item", "tolist", "len",
           "bool", "is_contiguous", "stride", "data_ptr", "element_size", "nelement", "ndimension", "storage_offset",
           "is_complex", "requires_grad", "get_device", "__get__", "float_power", "backward", "register_hook",
           "retain_grad", "setitem_done", "numpy", "int", "index", "is_nonzero", "ndim", "grad_fn", "is_leaf",
           "names", "layout", "is_sparse", "is_cuda", "is_meta", "untyped_storage", "equal", "allclose", "hash",
           "is_nested", "is_inference", "is_quantized", "is_mkldnn", "has_names", "isfinite_all", "output_nr",
           "is_set_to", "is_same_size", "is_signed", "nbytes", "itemsize"}


def _name(func) -> str:
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", "") or ""
    name = name.strip("_")
    if name.startswith(("i", "r")) and name[1:] in {"add", "sub", "mul", "truediv", "floordiv", "div", "pow", "and",
                                                   "or", "xor", "matmul", "mod", "lshift", "rshift"}:
        name = name[1:]
    if name.endswith("_") and name not in _IGNORE:
        name = name.rstrip("_")
    return name


@dataclass
class Trace:
    """What one labelled run found: slots, the ties between them, pins and the calls seen."""

    n: int = 1  # ids 0..n-1; id 0 is FIXED
    owner: list = field(default_factory=lambda: [-1])  # per id: index into keys (-1: activation-only)
    index: list = field(default_factory=lambda: [0])
    keys: list = field(default_factory=list)  # (tensor fqn, dim)
    key_ids: dict = field(default_factory=dict)  # (fqn, dim) -> np.ndarray of ids
    elements: dict = field(default_factory=dict)  # fqn -> ids tensor shaped like the parameter
    edges: list = field(default_factory=list)
    pins: list = field(default_factory=list)  # (ids, reason)
    convs: dict = field(default_factory=dict)  # weight fqn -> {"groups", "depthwise", "transposed"}
    attention: dict = field(default_factory=dict)  # weight fqn -> module fqn of an nn.MultiheadAttention
    splits: list = field(default_factory=list)  # (pieces x per-piece) id matrices of sized splits
    macs: int = 0
    modes: dict = field(default_factory=dict)  # train (True/False) -> output shapes, for each mode that ran

    def new(self, count: int, key: int = -1) -> np.ndarray:
        ids = np.arange(self.n, self.n + count, dtype=np.int64)
        self.n += count
        self.owner.extend([key] * count)
        self.index.extend(range(count) if key >= 0 else [0] * count)
        return ids

    def tie(self, a, b) -> None:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if a.shape == b.shape and a.numel() > 4096:
            a, b = _compact(a, b)
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a > 0) & (b > 0) & (a != b)
        if keep.any():
            key = torch.unique(a[keep] * (1 << 32) + b[keep])  # ids stay far below 2**32
            self.edges.append(torch.stack([key >> 32, key & ((1 << 32) - 1)], 1).numpy())

    def pin(self, ids, reason: str) -> None:
        ids = torch.as_tensor(ids)
        if ids.numel() > 4096:
            ids, _ = _compact(ids, ids)
        ids = ids.reshape(-1)
        ids = torch.unique(ids[ids > 0])
        if len(ids):
            self.pins.append((ids.numpy(), reason))

    def components(self) -> np.ndarray:
        """Connected components over the ties (not the pins): the smallest id in each."""
        parent = np.arange(self.n, dtype=np.int64)
        pairs = list(self.edges)
        if not pairs:
            return parent
        e = np.concatenate(pairs)
        a, b = e[:, 0], e[:, 1]
        while True:
            pa, pb = parent[a], parent[b]
            if np.array_equal(pa, pb):
                return parent
            m = np.minimum(pa, pb)
            np.minimum.at(parent, pa, m)  # hook each root under the smaller one
            np.minimum.at(parent, pb, m)
            while True:  # pointer jumping to the roots
                nxt = parent[parent]
                if np.array_equal(nxt, parent):
                    break
                parent = nxt


class _Labeller(TorchFunctionMode):
    def __init__(self, model: nn.Module, trace: Trace):
        super().__init__()
        self.t = trace
        self.names: dict[int, str] = {}
        for fqn, p in model.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(p), fqn)
        self.buffers: dict[int, str] = {}
        for fqn, b in model.named_buffers(remove_duplicate=False):
            self.buffers.setdefault(id(b), fqn)
        self.labels: dict[int, torch.Tensor] = {}
        self.keep: list = []
        self.counting = True  # MACs of the eval-mode run (the same count as count_macs_params)

    # -- labels ----------------------------------------------------------------------------------

    def slots(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        fqn = self.names.get(id(tensor)) or self.buffers.get(id(tensor))
        dim = dim % tensor.dim()
        key = (fqn, dim)
        if key not in self.t.key_ids:
            self.t.keys.append(key)
            self.t.key_ids[key] = self.t.new(tensor.shape[dim], len(self.t.keys) - 1)
        return torch.from_numpy(self.t.key_ids[key])

    def get(self, x: torch.Tensor) -> torch.Tensor:
        got = self.labels.get(id(x))
        if got is not None and got.shape == x.shape:
            return got
        fqn = self.names.get(id(x))
        if fqn is not None:  # a parameter used as an activation (class token, positional embedding, scale)
            if fqn not in self.t.elements:
                self.t.elements[fqn] = torch.from_numpy(self.t.new(x.numel())).reshape(x.shape)
            return self.t.elements[fqn]
        return torch.zeros(x.shape, dtype=torch.long)

    def labelled(self, x) -> bool:
        return isinstance(x, torch.Tensor) and (id(x) in self.labels or id(x) in self.names)

    def set(self, out, labels) -> None:
        if isinstance(out, torch.Tensor) and isinstance(labels, torch.Tensor) and labels.shape == out.shape:
            self.labels[id(out)] = labels.contiguous()
            self.keep.append(out)

    def set_tree(self, out, labels) -> None:
        outs, _ = tree_flatten(out)
        labs, _ = tree_flatten(labels)
        for o, lab in zip(outs, labs):
            self.set(o, lab)

    # -- dispatch --------------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.counting:
            self.t.macs += count_call(func, args, kwargs, out)
        name = _name(func)
        if name in _IGNORE or name == "":
            return out
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        if not any(self.labelled(a) for a in tensors):
            return out
        try:
            rule = getattr(self, "rule_" + name, None)
            if rule is not None:
                rule(args, kwargs, out)
            elif name in _IDENTITY:
                self.set(out, self.get(tensors[0]) if out.shape == tensors[0].shape else
                         self.get(tensors[0]).expand(out.shape).contiguous())
            elif name in _ELEMENTWISE:
                self.elementwise(tensors, out)
            elif name in _INDEX:
                self.index(func, args, kwargs, out)
            elif name in _REDUCE:
                self.reduce(name, args, kwargs, out)
            elif name in _ALONG_DIM:
                self.along_dim(name, args, kwargs, out)
            elif name in _SPATIAL:
                self.spatial(tensors[0], out, name)
            else:
                self.unknown(name, tensors, out)
        except Exception as e:  # a rule that cannot follow this call pins what it touched
            self.unknown(f"{name} ({type(e).__name__}: {e})", tensors, out)
        return out

    def unknown(self, name, tensors, out) -> None:
        for x in tensors:
            if self.labelled(x):
                self.t.pin(self.get(x), f"operation {name!r} is not one prunekit can follow")
        # outputs keep FIXED labels (the default)

    # -- families --------------------------------------------------------------------------------

    def tie_along(self, labels: torch.Tensor, dims) -> None:
        """Every positive label along ``dims`` (within each slice) joins one unit."""
        for d in dims:
            rep = labels.amax(d, keepdim=True).expand_as(labels)
            self.t.tie(labels, rep)

    def elementwise(self, tensors, out) -> None:
        if not isinstance(out, torch.Tensor):
            return
        shape = out.shape
        ops = [(x.shape, self.get(x)) for x in tensors]
        result = None
        for _, lab in ops:
            if (lab > 0).any():
                lab = lab.expand(shape) if lab.shape != shape else lab
                if result is None:
                    result = lab
                else:
                    self.t.tie(result, lab)
                    result = torch.where(result > 0, result, lab)
        if result is None:
            return
        varying = _varying(result)
        for s, lab in ops:
            if (lab == FIXED).any():
                s = (1,) * (len(shape) - len(s)) + tuple(s)
                full = [d for d in varying if s[d] != 1]
                self.tie_along(result, full)
        self.set(out, result.contiguous() if result.shape == shape else result.expand(shape).contiguous())

    def index(self, func, args, kwargs, out) -> None:
        def swap(a):
            if isinstance(a, torch.Tensor) and (a.is_floating_point() or a.is_complex() or self.labelled(a)):
                return self.get(a)
            if isinstance(a, (list, tuple)):
                return type(a)(swap(b) for b in a) if not hasattr(a, "_fields") else type(a)(*[swap(b) for b in a])
            return a

        labels = func(*swap(list(args)), **{k: swap(v) for k, v in kwargs.items()})
        self.set_tree(out, labels)
        if _name(func) in _SPLITTING and isinstance(args[0], torch.Tensor):
            self.record_split(_name(func), args, kwargs, out)

    def record_split(self, name, args, kwargs, out) -> None:
        """A dimension cut into equal pieces by size: after pruning, the pieces must still match."""
        x = args[0]
        lab = self.get(x)
        varying = _varying(lab)
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
            for dim, first in _split_dims(tuple(x.shape), tuple(out.shape)):
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
        varying = _varying(lab)
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
        varying = _varying(lab)
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
        self.tie_along(lab, [d for d in dims if d in _varying(lab)])
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
        if d in _varying(lab):
            self.tie_along(lab, [d])
        self.set_tree(out, [lab] * len(tree_flatten(out)[0]) if not isinstance(out, torch.Tensor) else lab)

    def spatial(self, x, out, name) -> None:
        lab = self.get(x)
        first = out[0] if isinstance(out, (tuple, list)) else out
        varying = _varying(lab)
        if x.dim() < 2 or any(d != 1 for d in varying) or first.shape[:2] != x.shape[:2]:
            return self.unknown(name, [x], out)
        rep = lab.amax(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else lab
        self.set_tree(out, [rep.expand(o.shape).contiguous() for o in tree_flatten(out)[0]])

    # -- matmul and weights ------------------------------------------------------------------------

    def is_param(self, x) -> bool:
        return isinstance(x, torch.Tensor) and id(x) in self.names

    def rule_matmul(self, args, kwargs, out) -> None:
        a, b = args[0], args[1]
        if self.is_param(b) and b.dim() == 2 and not self.is_param(a):  # x @ W with W (in, out)
            return self.linear_like(a, b, None, in_dim=0, out_dim=1, out=out)
        la, lb = self.get(a), self.get(b)
        if a.dim() == 1:
            la = la.unsqueeze(0)
        if b.dim() == 1:
            lb = lb.unsqueeze(-1)
        self.tie_along(la, [la.dim() - 1])
        self.tie_along(lb, [lb.dim() - 2])
        ra = la.amax(-1, keepdim=True)  # (..., m, 1)
        rb = lb.amax(-2, keepdim=True)  # (..., 1, n)
        shape = torch.broadcast_shapes(ra.shape[:-2], rb.shape[:-2]) + (ra.shape[-2], rb.shape[-1])
        ra, rb = ra.expand(shape), rb.expand(shape)
        self.t.tie(ra, rb)
        for lab, r, other, k_dim in ((la, ra, rb, la.dim() - 1), (lb, rb, ra, lb.dim() - 2)):
            if (other == FIXED).any() and k_dim in _varying(lab):
                self.t.pin(lab, "contracted with a tensor that has no channel slots")
        res = torch.where(ra > 0, ra, rb)
        if a.dim() == 1:
            res = res.squeeze(-2)
        if b.dim() == 1:
            res = res.squeeze(-1)
        self.set(out, res.contiguous())

    rule_mm = rule_bmm = rule_matmul

    def rule_addmm(self, args, kwargs, out) -> None:
        bias, a, b = args[0], args[1], args[2]
        if self.is_param(b):
            return self.linear_like(a, b, bias if self.is_param(bias) else None, in_dim=0, out_dim=1, out=out)
        self.unknown("addmm", [bias, a, b], out)

    def feed(self, acts: torch.Tensor, slots: torch.Tensor) -> None:
        """Activations ``acts`` (already broadcast to ``slots``) enter a weight's input slots."""
        self.t.tie(acts, slots)
        fixed = acts == FIXED
        if fixed.any():
            self.t.pin(slots[fixed], "fed by the model's input or a constant")

    def linear_like(self, x, w, bias, in_dim, out_dim, out) -> None:
        lx = self.get(x)
        w_in, w_out = self.slots(w, in_dim), self.slots(w, out_dim)
        self.feed(lx, w_in.expand(lx.shape))
        if bias is not None:
            self.t.tie(self.slots(bias, 0), w_out)
        self.set(out, w_out.expand(out.shape).contiguous())

    def rule_linear(self, args, kwargs, out) -> None:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if not self.is_param(w) or (bias is not None and not self.is_param(bias)):
            return self.unknown("linear with a computed weight", [x, w], out)
        self.linear_like(x, w, bias, in_dim=1, out_dim=0, out=out)

    def conv(self, args, kwargs, out, transposed: bool) -> None:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
        if not self.is_param(w) or (bias is not None and not self.is_param(bias)):
            return self.unknown("convolution with a computed weight", [x, w], out)
        if transposed and groups > 1:
            return self.unknown("grouped transposed convolution", [x, w], out)
        lx = self.get(x)
        w_in, w_out = (self.slots(w, 0), self.slots(w, 1)) if transposed else (self.slots(w, 1), self.slots(w, 0))
        c_in, c_out = x.shape[1], out.shape[1]
        ch = lx.movedim(1, -1).reshape(-1, c_in)  # (positions, c_in)
        depthwise = groups > 1 and c_in == groups
        if groups == 1:
            self.feed(ch, w_in.expand(ch.shape))
        elif depthwise:  # whole groups go: input channel k with its output channels
            per_group = w_out.reshape(groups, c_out // groups)
            self.feed(ch, per_group[:, 0].expand(ch.shape))
            self.tie_along(per_group, [1])
        else:  # the same local channel goes from every group
            cin_g = c_in // groups
            self.feed(ch.reshape(-1, groups, cin_g), w_in.expand(ch.shape[0], groups, cin_g))
            self.tie_along(w_out.reshape(groups, c_out // groups), [0])
        if bias is not None:
            self.t.tie(self.slots(bias, 0), w_out)
        self.t.convs[self.names[id(w)]] = {"groups": groups, "depthwise": depthwise, "transposed": transposed}
        shape = [1] * out.dim()
        shape[1] = c_out
        self.set(out, w_out.reshape(shape).expand(out.shape).contiguous())

    def rule_conv1d(self, args, kwargs, out):
        self.conv(args, kwargs, out, transposed=False)

    rule_conv2d = rule_conv3d = rule_conv1d

    def rule_conv_transpose1d(self, args, kwargs, out):
        self.conv(args, kwargs, out, transposed=True)

    rule_conv_transpose2d = rule_conv_transpose3d = rule_conv_transpose1d

    def per_channel(self, x, out, params, dim: int) -> None:
        """Norm-like: ``params`` are indexed by ``x``'s channel dimension ``dim``; labels pass through."""
        lx = self.get(x)
        ch = lx.movedim(dim, -1).reshape(-1, x.shape[dim])
        for p in params:
            if p is None:
                continue
            if not (self.is_param(p) or id(p) in self.buffers):
                return self.unknown("normalisation with computed statistics", [x], out)
            self.feed(ch, self.slots(p, 0).expand(ch.shape))
        self.set(out, lx)

    def rule_batch_norm(self, args, kwargs, out):
        x = args[0]
        names = ("running_mean", "running_var", "weight", "bias")
        ps = [kwargs.get(n, args[i + 1] if len(args) > i + 1 else None) for i, n in enumerate(names)]
        self.per_channel(x, out, ps, 1)

    def rule_instance_norm(self, args, kwargs, out):
        x = args[0]
        names = ("running_mean", "running_var", "weight", "bias")
        ps = [kwargs.get(n, args[i + 1] if len(args) > i + 1 else None) for i, n in enumerate(names)]
        self.per_channel(x, out, ps, 1)

    def rule_layer_norm(self, args, kwargs, out):
        x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
        w = args[2] if len(args) > 2 else kwargs.get("weight")
        b = args[3] if len(args) > 3 else kwargs.get("bias")
        if len(shape) != 1:
            return self.unknown("layer_norm over more than one dimension", [x], out)
        self.per_channel(x, out, [w, b], x.dim() - 1)

    def rule_rms_norm(self, args, kwargs, out):
        x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
        w = args[2] if len(args) > 2 else kwargs.get("weight")
        if len(shape) != 1:
            return self.unknown("rms_norm over more than one dimension", [x], out)
        self.per_channel(x, out, [w], x.dim() - 1)

    def rule_group_norm(self, args, kwargs, out):
        x, groups = args[0], args[1] if len(args) > 1 else kwargs["num_groups"]
        w = args[2] if len(args) > 2 else kwargs.get("weight")
        b = args[3] if len(args) > 3 else kwargs.get("bias")
        lx = self.get(x)
        c = x.shape[1]
        ch = lx.movedim(1, -1).reshape(-1, groups, c // groups)
        self.tie_along(ch, [1])  # the same local channel goes from every group
        self.per_channel(x, out, [w, b], 1)

    def rule_prelu(self, args, kwargs, out):
        x, w = args[0], args[1]
        if w.numel() == 1:
            return self.set(out, self.get(x))
        self.per_channel(x, out, [w], 1)

    def rule_embedding(self, args, kwargs, out):
        w = args[1] if len(args) > 1 else kwargs["weight"]
        if not self.is_param(w):
            return self.unknown("embedding with a computed table", [w], out)
        self.set(out, self.slots(w, 1).expand(out.shape).contiguous())

    def rule_scaled_dot_product_attention(self, args, kwargs, out):
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        lq, lk, lv = self.get(q), self.get(k), self.get(v)
        if q.dim() < 3:
            self.tie_along(torch.cat([lq.reshape(-1), lk.reshape(-1), lv.reshape(-1)]).unsqueeze(0), [1])
            return self.set(out, lq.amax().expand(out.shape).contiguous())
        hq, hk = q.shape[-3], k.shape[-3]
        rep = torch.from_numpy(self.t.new(hk))  # one unit per key/value head with its query heads
        per_q = rep.repeat_interleave(hq // hk)
        shape_q = (1,) * (q.dim() - 3) + (hq, 1, 1)
        shape_k = (1,) * (k.dim() - 3) + (hk, 1, 1)
        self.t.tie(lq, per_q.reshape(shape_q).expand(lq.shape))
        self.t.tie(lk, rep.reshape(shape_k).expand(lk.shape))
        self.t.tie(lv, rep.reshape(shape_k).expand(lv.shape))
        if isinstance(mask, torch.Tensor) and mask.dim() >= 3 and mask.shape[-3] == hq and hq > 1:
            lm = self.get(mask)
            if (lm == FIXED).any():
                self.t.pin(per_q, "a per-head attention mask without channel slots")
            self.t.tie(lm, per_q.reshape(shape_q).expand(lm.shape))
        self.set(out, per_q.reshape(shape_q).expand(out.shape).contiguous())

    def rule_multi_head_attention_forward(self, args, kwargs, out):
        names = ["query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias"]
        a = dict(zip(names, args))
        a.update(kwargs)
        w_in, b_in, w_out, b_out = a["in_proj_weight"], a["in_proj_bias"], a["out_proj_weight"], a["out_proj_bias"]
        if kwargs.get("use_separate_proj_weight") or a["bias_k"] is not None or not self.is_param(w_in):
            return self.unknown("multi_head_attention_forward with separate projections or bias_k/bias_v",
                                [a["query"], a["key"], a["value"]], out)
        e, h = a["embed_dim_to_check"], a["num_heads"]
        cols, rows = self.slots(w_in, 1), self.slots(w_in, 0)
        for x in (a["query"], a["key"], a["value"]):
            lx = self.get(x)
            self.feed(lx, cols.expand(lx.shape))
        heads = rows.reshape(3, h, e // h).permute(1, 0, 2).reshape(h, -1)
        o_cols = self.slots(w_out, 1).reshape(h, e // h)
        self.tie_along(torch.cat([heads, o_cols], 1), [1])  # a head: its q, k, v rows and out columns
        if b_in is not None:
            self.t.tie(self.slots(b_in, 0), rows)
        o_rows = self.slots(w_out, 0)
        if b_out is not None:
            self.t.tie(self.slots(b_out, 0), o_rows)
        # torch keeps embed_dim == num_heads * head_dim: the model width and the heads move together or not at all
        self.t.pin(torch.cat([cols, o_rows]), "nn.MultiheadAttention's embed_dim (the residual width) is fixed")
        self.t.attention[self.names[id(w_in)]] = {"num_heads": h}
        outs = tree_flatten(out)[0]
        self.set(outs[0], o_rows.expand(outs[0].shape).contiguous())


def _compact(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the dimensions along which both label tensors are constant (spatial and token dims)."""
    for d in range(a.dim()):
        if a.shape[d] > 1:
            a0, b0 = a.narrow(d, 0, 1), b.narrow(d, 0, 1)
            if bool((a == a0).all()) and bool((b == b0).all()):
                a, b = a0, b0
    return a, b


def _varying(lab: torch.Tensor) -> list[int]:
    """Dimensions along which the (non-FREE) labels change."""
    out = []
    if lab.dim() == 0:
        return out
    big = torch.iinfo(torch.long).max
    hi_src = lab
    lo_src = lab.masked_fill(lab == FREE, big)
    for d in range(lab.dim()):
        if lab.shape[d] < 2:
            continue
        hi, lo = hi_src.amax(d), lo_src.amin(d)
        valid = hi != FREE
        if bool((hi[valid] != lo[valid]).any()):
            out.append(d)
    return out


def _split_dims(before: tuple, after: tuple) -> list[tuple[int, int]]:
    """Input dims that a reshape cuts into several output dims: (input dim, size of the first piece)."""
    out, i, j = [], 0, 0
    while i < len(before) and j < len(after):
        if before[i] == after[j]:
            i, j = i + 1, j + 1
            continue
        if before[i] == 1:
            i += 1
            continue
        if after[j] == 1:
            j += 1
            continue
        start, prod = j, 1
        while j < len(after) and prod < before[i]:
            prod *= after[j]
            j += 1
        if prod == before[i] and j - start > 1:
            out.append((i, after[start]))
            i += 1
        else:  # dims merge (flatten) or do not line up: no cut to record
            return out
    return out


def _flat_inputs(example_inputs):
    if isinstance(example_inputs, dict):
        return (), example_inputs
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Run ``model`` freely inside; its buffers (batch-norm statistics) and train/eval modes come back."""
    buffers = [(b, b.clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)
        for m, mode in modes:
            m.training = mode


def trace(model: nn.Module, example_inputs) -> Trace:
    """Run ``model`` in eval mode with labelled channels, and in train mode too when eval mode
    leaves parameters unused (auxiliary heads). Buffers and modes are restored afterwards.

    Raises:
        ValueError: ``example_inputs`` do not run the model in eval mode.
    """
    t = Trace()
    args, kwargs = _flat_inputs(example_inputs)
    labeller = _Labeller(model, t)
    with preserved(model):
        for train in (False, True):
            model.train(train)
            try:
                with torch.no_grad(), labeller:
                    out = model(*args, **kwargs)
            except Exception as e:
                if not train:
                    raise ValueError(f"example_inputs do not run the model: {type(e).__name__}: {e}") from e
                break
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    t.pin(labeller.get(o), "model output")
            labeller.labels.clear()
            labeller.keep.clear()
            labeller.counting = False
            t.modes[train] = [tuple(o.shape) for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
            seen = {fqn for fqn, _ in t.keys} | set(t.elements)
            if all(n in seen for n, _ in model.named_parameters()):
                break
    return t
