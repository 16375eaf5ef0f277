"""Pattern strings (``"unstructured"``, ``"2:4"``, ``"block:1x4"``, ``"channel"``) parsed without PyTorch,
so that :mod:`prunekit.patterns` and :mod:`prunekit.keras` read the same vocabulary."""

from __future__ import annotations

import re

__all__ = ["PATTERN_FORMS", "parse_pattern"]

PATTERN_FORMS = "'unstructured', 'N:M' (e.g. '2:4'), 'block:RxC' (e.g. 'block:1x4') or 'channel'"
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK = re.compile(r"^\s*block\s*:\s*(\d+)\s*x\s*(\d+)\s*$", re.IGNORECASE)


def parse_pattern(pattern: str) -> tuple:
    """``("unstructured",)``, ``("channel",)``, ``("nm", N, M)`` or ``("block", R, C)``.

    Raises:
        TypeError: ``pattern`` is not a string. ValueError: it is none of the forms.

    Example:
        >>> parse_pattern("2:4")
        ('nm', 2, 4)
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string ({PATTERN_FORMS}), got {type(pattern).__name__}")
    key = pattern.strip().lower()
    if key in ("unstructured", "channel"):
        return (key,)
    if m := _NM.match(key):
        return ("nm", int(m.group(1)), int(m.group(2)))
    if m := _BLOCK.match(key):
        return ("block", int(m.group(1)), int(m.group(2)))
    raise ValueError(f"pattern={pattern!r} is unknown; use {PATTERN_FORMS}")
