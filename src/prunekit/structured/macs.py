"""Multiply-accumulate and parameter counts from one run of the model."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["count_macs_params", "count_call", "Counter"]


class Counter(TorchFunctionMode):
    """Adds up :func:`count_call` over every call while active."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.macs += count_call(func, args, kwargs, out)
        return out


def count_call(func, args, kwargs, out) -> int:
    """MACs of one call seen by a TorchFunctionMode (0 for calls that are not matrix work)."""
    try:
        return _macs((getattr(func, "__name__", "") or "").strip("_"), args, kwargs, out)
    except Exception:  # counting never breaks the model's forward
        return 0


def _macs(name: str, args, kwargs, out) -> int:
    if name == "linear":
        return out.numel() * args[1].shape[1]
    if name in ("conv1d", "conv2d", "conv3d"):
        w = args[1]
        return out.numel() * w.shape[1] * math.prod(w.shape[2:])
    if name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        w = args[1]
        return args[0].numel() * w.shape[1] * math.prod(w.shape[2:])
    if name in ("matmul", "mm", "bmm", "rmatmul"):
        a = args[0]
        return out.numel() * a.shape[-1] if a.dim() else 0
    if name in ("addmm", "baddbmm"):
        return out.numel() * args[1].shape[-1]
    if name == "scaled_dot_product_attention":
        q, k, v = args[:3]
        return q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    if name == "einsum" and len(args) == 3 and all(isinstance(a, torch.Tensor) for a in args[1:]):
        letters = {}
        for term, t in zip(args[0].replace(" ", "").split("->")[0].split(","), args[1:]):
            letters.update(zip(term, t.shape))
        return math.prod(letters.values())
    if name == "multi_head_attention_forward":
        q, k = args[0], args[1]
        w_in, w_out = args[5], args[11]
        inner = w_in.shape[0] // 3
        tokens_q, tokens_k = q.numel() // q.shape[-1], k.numel() // k.shape[-1]
        return (tokens_q * inner * q.shape[-1] + 2 * tokens_k * inner * k.shape[-1]
                + 2 * tokens_q * k.shape[0] * inner + tokens_q * w_out.shape[0] * inner)
    return 0


def count_macs_params(model: nn.Module, example_inputs: Any) -> tuple[int, int]:
    """Multiply-accumulates of one forward on ``example_inputs``, and the number of parameters.

    MACs count the matrix work: linear, convolutions (including grouped and transposed), matmul,
    attention (``scaled_dot_product_attention`` and ``nn.MultiheadAttention``) and einsum; element-wise
    operations and normalisations are not counted. Parameters shared by two modules count once.
    Changes nothing (the forward runs in eval mode under ``torch.no_grad``; modes are restored).

    Example:
        >>> macs, params = prunekit.count_macs_params(model, torch.randn(1, 3, 224, 224))
    """
    if isinstance(example_inputs, dict):
        args, kwargs = (), example_inputs
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        args, kwargs = (example_inputs,), {}
    counter = Counter()
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(*args, **kwargs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    params = sum(p.numel() for p in model.parameters())
    return int(counter.macs), int(params)
