"""Multiply-accumulate and parameter counts from one run of the model.

:data:`MACS` maps each torch function that does matrix work (found by :func:`~prunekit.structured.ops.functions`,
as the trace finds its rules) to the count of one call.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunekit.inputs import call, modes
from prunekit.structured.ops import functions

__all__ = ["count_macs_params", "count_call", "Counter", "MACS"]


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
        count = MACS.get(func)
        return count(args, kwargs, out) if count is not None else 0
    except Exception:  # counting never breaks the model's forward (an unhashable callable included)
        return 0


def _linear(args, kwargs, out) -> int:
    return out.numel() * args[1].shape[1]


def _conv(args, kwargs, out) -> int:
    w = args[1]
    return out.numel() * w.shape[1] * math.prod(w.shape[2:])


def _conv_transpose(args, kwargs, out) -> int:
    w = args[1]
    return args[0].numel() * w.shape[1] * math.prod(w.shape[2:])


def _matmul(args, kwargs, out) -> int:
    a = args[0]
    return out.numel() * a.shape[-1] if a.dim() else 0


def _addmm(args, kwargs, out) -> int:
    return out.numel() * args[1].shape[-1]


def _attention(args, kwargs, out) -> int:
    q, k, v = args[:3]
    return q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _einsum(args, kwargs, out) -> int:
    if not (len(args) == 3 and all(isinstance(a, torch.Tensor) for a in args[1:])):
        return 0
    letters = {}
    for term, t in zip(args[0].replace(" ", "").split("->")[0].split(","), args[1:]):
        letters.update(zip(term, t.shape))
    return math.prod(letters.values())


def _multi_head_attention(args, kwargs, out) -> int:
    q, k = args[0], args[1]
    w_in, w_out = args[5], args[11]
    inner = w_in.shape[0] // 3
    tokens_q, tokens_k = q.numel() // q.shape[-1], k.numel() // k.shape[-1]
    return (tokens_q * inner * q.shape[-1] + 2 * tokens_k * inner * k.shape[-1]
            + 2 * tokens_q * k.shape[0] * inner + tokens_q * w_out.shape[0] * inner)


MACS: dict[Callable, Callable[[tuple, dict, Any], int]] = {
    f: count
    for names, count in (
        (("linear",), _linear),
        (("conv1d", "conv2d", "conv3d"), _conv),
        (("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"), _conv_transpose),
        (("matmul", "mm", "bmm", "rmatmul"), _matmul),
        (("addmm", "baddbmm"), _addmm),
        (("scaled_dot_product_attention",), _attention),
        (("einsum",), _einsum),
        (("multi_head_attention_forward",), _multi_head_attention),
    )
    for name in names
    for f in functions(name)
}


def count_macs_params(model: nn.Module, example_inputs: Any) -> tuple[int, int]:
    """Multiply-accumulates of one forward on ``example_inputs``, and the number of parameters.

    MACs count the matrix work: linear, convolutions (including grouped and transposed), matmul,
    attention (``scaled_dot_product_attention`` and ``nn.MultiheadAttention``) and einsum; element-wise
    operations and normalisations are not counted. Parameters shared by two modules count once.
    Changes nothing (the forward runs in eval mode under ``torch.no_grad``; modes are restored).

    Args:
        model: the model.
        example_inputs: one input, as :mod:`prunekit.inputs` reads it (a tensor, a tuple of
            positional inputs or a dict of keyword inputs).

    Example:
        >>> macs, params = prunekit.count_macs_params(model, torch.randn(1, 3, 224, 224))
    """
    counter = Counter()
    with modes(model), torch.no_grad(), counter:
        call(model, example_inputs)
    params = sum(p.numel() for p in model.parameters())
    return int(counter.macs), int(params)
