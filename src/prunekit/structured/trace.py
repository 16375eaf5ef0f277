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

Which rule follows a call is looked up by the function object the mode receives
(:data:`prunekit.structured.ops.OPS`: ``torch.cat``, ``torch.Tensor.__iadd__``, the getter of
``Tensor.T``...): a family of rules, or one of :data:`RULES`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from prunekit.inputs import call, modes
from prunekit.structured.macs import count_call
from prunekit.structured.ops import FIXED, OPS, RULED, compact, describe, nameless, varying_dims
from prunekit.structured.rules_index import IndexRules
from prunekit.structured.rules_weights import WeightRules

__all__ = ["Trace", "trace", "preserved", "RULES"]


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
            a, b = compact(a, b)
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a > 0) & (b > 0) & (a != b)
        if keep.any():
            key = torch.unique(a[keep] * (1 << 32) + b[keep])  # ids stay far below 2**32
            self.edges.append(torch.stack([key >> 32, key & ((1 << 32) - 1)], 1).numpy())

    def pin(self, ids, reason: str) -> None:
        ids = torch.as_tensor(ids)
        if ids.numel() > 4096:
            ids, _ = compact(ids, ids)
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


class _Labeller(IndexRules, WeightRules, TorchFunctionMode):
    """Labels every activation; the rules for operations that move elements and for operations with
    weights live in :mod:`~prunekit.structured.rules_index` and :mod:`~prunekit.structured.rules_weights`."""

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
        try:
            op = OPS.get(func)
        except TypeError:  # an unhashable callable: not one of torch's
            op = None
        if op is None and nameless(func) or op is not None and op.family == "ignore":
            return out
        name = op.name if op is not None else describe(func)
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        if not any(self.labelled(a) for a in tensors):
            return out
        try:
            if op is None:
                self.unknown(name, tensors, out)
            elif op.family == "rule":
                RULES[name](self, args, kwargs, out)
            elif op.family == "identity":
                self.set(out, self.get(tensors[0]) if out.shape == tensors[0].shape else
                         self.get(tensors[0]).expand(out.shape).contiguous())
            elif op.family == "elementwise":
                self.elementwise(tensors, out)
            elif op.family == "index":
                self.index(name, func, args, kwargs, out)
            elif op.family == "reduce":
                self.reduce(name, args, kwargs, out)
            elif op.family == "along_dim":
                self.along_dim(name, args, kwargs, out)
            else:  # "spatial"
                self.spatial(tensors[0], out, name)
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
        varying = varying_dims(result)
        for s, lab in ops:
            if (lab == FIXED).any():
                s = (1,) * (len(shape) - len(s)) + tuple(s)
                full = [d for d in varying if s[d] != 1]
                self.tie_along(result, full)
        self.set(out, result.contiguous() if result.shape == shape else result.expand(shape).contiguous())



RULES: dict[str, Callable] = {  # the rule for each name of ops.RULED: (labeller, args, kwargs, out)
    "getitem": IndexRules.rule_getitem,
    "setitem": IndexRules.rule_setitem,
    "pad": IndexRules.rule_pad,
    "matmul": WeightRules.rule_matmul,
    "mm": WeightRules.rule_matmul,
    "bmm": WeightRules.rule_matmul,
    "addmm": WeightRules.rule_addmm,
    "linear": WeightRules.rule_linear,
    "conv1d": WeightRules.rule_conv,
    "conv2d": WeightRules.rule_conv,
    "conv3d": WeightRules.rule_conv,
    "conv_transpose1d": WeightRules.rule_conv_transpose,
    "conv_transpose2d": WeightRules.rule_conv_transpose,
    "conv_transpose3d": WeightRules.rule_conv_transpose,
    "batch_norm": WeightRules.rule_batch_norm,
    "instance_norm": WeightRules.rule_instance_norm,
    "layer_norm": WeightRules.rule_layer_norm,
    "rms_norm": WeightRules.rule_rms_norm,
    "group_norm": WeightRules.rule_group_norm,
    "prelu": WeightRules.rule_prelu,
    "embedding": WeightRules.rule_embedding,
    "scaled_dot_product_attention": WeightRules.rule_scaled_dot_product_attention,
    "multi_head_attention_forward": WeightRules.rule_multi_head_attention_forward,
}
assert set(RULES) == RULED, set(RULES) ^ RULED


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Run ``model`` freely inside; its buffers (batch-norm statistics) and every module's train/eval
    flag (:func:`prunekit.inputs.modes`) come back."""
    buffers = [(b, b.clone()) for b in model.buffers()]
    try:
        with modes(model):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)


def trace(model: nn.Module, example_inputs) -> Trace:
    """Run ``model`` in eval mode with labelled channels, and in train mode too when eval mode
    leaves parameters unused (auxiliary heads). Buffers and modes are restored afterwards.

    Args:
        model: the model.
        example_inputs: one input, as :mod:`prunekit.inputs` reads it (a tensor, a tuple of
            positional inputs or a dict of keyword inputs).

    Raises:
        ValueError: ``example_inputs`` do not run the model in eval mode.
    """
    t = Trace()
    labeller = _Labeller(model, t)
    with preserved(model):
        for train in (False, True):
            model.train(train)
            try:
                with torch.no_grad(), labeller:
                    out = call(model, example_inputs)
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
