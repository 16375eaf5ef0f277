"""Deprecated names kept for one release: one helper so every rename warns the same way.

Every alias here is removed in prunekit 0.3; CHANGELOG.md lists them.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

REMOVED_IN = "0.3"


def old_kwargs(func: str, given: dict, renames: dict[str, str], converts: dict[str, Callable] | None = None) -> dict:
    """The deprecated keyword arguments in ``given`` (a function's ``**deprecated``), under their new names.

    ``renames`` maps old name -> new name; ``converts`` old name -> function, where the meaning moved
    too (a per-round rate to a final sparsity). Each old name passed warns once; an unknown name is the
    ``TypeError`` Python would raise.

    Example:
        >>> def iterative_pruning(model, ..., sparsity=0.9, **deprecated):
        ...     sparsity = old_kwargs("iterative_pruning", deprecated, {"target": "sparsity"}).get("sparsity", sparsity)
    """
    converts = converts or {}
    unknown = sorted(set(given) - set(renames))
    if unknown:
        raise TypeError(f"{func}() got an unexpected keyword argument {unknown[0]!r}")
    out = {}
    for old, value in given.items():
        new = renames[old]
        warnings.warn(f"{func}({old}=...) is deprecated and goes in prunekit {REMOVED_IN}; use {new}=",
                      DeprecationWarning, stacklevel=3)
        out[new] = converts[old](value) if old in converts else value
    return out


def deprecated_alias(new: Callable, old_name: str) -> Callable:
    """``new`` under its old name, warning on each call (the old function is removed in 0.3)."""

    @functools.wraps(new)
    def alias(*args, **kwargs):
        warnings.warn(f"{old_name}() is deprecated and goes in prunekit {REMOVED_IN}; use {new.__module__}.{new.__name__}()",
                      DeprecationWarning, stacklevel=2)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated: use :func:`{new.__module__}.{new.__name__}` (this name goes in prunekit {REMOVED_IN})."
    return alias

