"""Argument checks shared by the public functions: each error names the argument and a fix."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["fraction", "integer"]


def fraction(value: Any, name: str) -> float:
    """A sparsity-like number in [0, 1) (Python, numpy or 0-d torch scalars), as a float."""
    if _is_tensor_scalar(value):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), e.g. 0.8 for 80% zeros; got {value!r}")
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is outside [0, 1); pass e.g. 0.8 to prune 80% of the weights")
    return float(value)


def integer(value: Any, name: str, minimum: int) -> int:
    """An int (not a bool; numpy ints accepted) of at least ``minimum``, as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return int(value)


def _is_tensor_scalar(value: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool
