"""Scores to boolean masks (True = kept): unstructured, N:M, blocks and channels.

A pattern cuts a weight into *groups* that are kept or pruned together: single elements
(``"unstructured"``), ``R x C`` tiles (``"block:RxC"``), whole output channels (``"channel"``). It
reduces element scores to one score per group (the mean, so that for ``"magnitude"`` a block is ranked
by its L1 norm and for ``"l2"`` by its L2 norm, and channels of layers with different fan-in compare
fairly in global scope) and expands kept groups back to a mask. How many groups go is decided by the
caller (``prunekit.pruning``), globally or per layer.

``"N:M"`` is different: in every run of M consecutive weights along the input dimension (``in_features``
of Linear, input channels of Conv) the N highest-scoring are kept, so its sparsity is always 1 - N/M.

Layout: blocks and channels work on the 2-D view ``(out, everything else)`` of a weight, with the
output dimension first (dim 1 for transposed convolutions); a Conv weight ``(O, I, kh, kw)`` is tiled
as the ``(O, I*kh*kw)`` matrix its im2col GEMM multiplies.
"""

from __future__ import annotations

import torch

from prunekit._pattern_names import PATTERN_FORMS, parse_pattern

__all__ = ["Pattern", "Unstructured", "NM", "Block", "Channel", "get_pattern", "PATTERN_FORMS"]



def _rows(t: torch.Tensor, out_dim: int) -> torch.Tensor:
    """2-D view ``(out, rest)`` of ``t`` with the output dimension first."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.movedim(out_dim, 0).reshape(t.shape[out_dim], -1)


def _unrows(m: torch.Tensor, shape: torch.Size, out_dim: int) -> torch.Tensor:
    """Inverse of :func:`_rows`."""
    if len(shape) == 0:
        return m.reshape(shape)
    moved = [shape[out_dim]] + [s for i, s in enumerate(shape) if i != out_dim]
    return m.reshape(moved).movedim(0, out_dim)


class Pattern:
    """Base class for ranked patterns (everything but N:M)."""

    name = "pattern"
    fixed_sparsity: float | None = None

    def check(self, shape: torch.Size, fqn: str, out_dim: int = 0, in_dim: int | None = 1) -> None:
        """Raise ``ValueError`` naming ``fqn`` if this pattern cannot tile a weight of ``shape``."""

    def group_size(self, shape: torch.Size, out_dim: int = 0) -> int:
        raise NotImplementedError

    def group_scores(self, scores: torch.Tensor, out_dim: int = 0) -> torch.Tensor:
        """One score per group (1-D), the mean of its elements' scores."""
        raise NotImplementedError

    def expand(self, keep: torch.Tensor, shape: torch.Size, out_dim: int = 0) -> torch.Tensor:
        """Boolean element mask of ``shape`` from a 1-D boolean ``keep`` per group."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other) -> bool:
        return isinstance(other, Pattern) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


class Unstructured(Pattern):
    """Each weight on its own."""

    name = "unstructured"

    def group_size(self, shape, out_dim=0):
        return 1

    def group_scores(self, scores, out_dim=0):
        return scores.reshape(-1)

    def expand(self, keep, shape, out_dim=0):
        return keep.reshape(shape)


class Block(Pattern):
    """``rows x cols`` tiles of the ``(out, rest)`` view, kept or pruned whole.

    Args:
        rows: tile height along the output dimension.
        cols: tile width along the input (flattened) dimension.
    """

    def __init__(self, rows: int, cols: int):
        if rows < 1 or cols < 1:
            raise ValueError(f"pattern='block:{rows}x{cols}': block sides must be >= 1, e.g. 'block:1x4'")
        self.rows, self.cols = rows, cols
        self.name = f"block:{rows}x{cols}"

    def check(self, shape, fqn, out_dim=0, in_dim=1):
        o = shape[out_dim] if len(shape) else 1
        rest = max(1, int(torch.Size(shape).numel()) // max(o, 1))
        if o % self.rows or rest % self.cols:
            raise ValueError(
                f"pattern='{self.name}' does not tile '{fqn}': its (out, in) view is ({o}, {rest}), not "
                f"divisible by ({self.rows}, {self.cols}). Pick a block that divides it, or exclude='{fqn}'"
            )

    def group_size(self, shape, out_dim=0):
        return self.rows * self.cols

    def _tiles(self, t, out_dim):
        r = _rows(t, out_dim)
        o, k = r.shape
        return r.reshape(o // self.rows, self.rows, k // self.cols, self.cols)

    def group_scores(self, scores, out_dim=0):
        return self._tiles(scores, out_dim).mean(dim=(1, 3)).reshape(-1)

    def expand(self, keep, shape, out_dim=0):
        o = shape[out_dim] if len(shape) else 1
        k = max(1, int(torch.Size(shape).numel()) // max(o, 1))
        tiles = keep.reshape(o // self.rows, 1, k // self.cols, 1)
        full = tiles.expand(-1, self.rows, -1, self.cols).reshape(o, k)
        return _unrows(full, shape, out_dim)


class Channel(Pattern):
    """Whole output channels (rows of the ``(out, rest)`` view), masked but not removed.

    Use ``prunekit.structured`` to physically remove channels.
    """

    name = "channel"

    def group_size(self, shape, out_dim=0):
        o = shape[out_dim] if len(shape) else 1
        return int(torch.Size(shape).numel()) // max(o, 1)

    def group_scores(self, scores, out_dim=0):
        return _rows(scores, out_dim).mean(dim=1)

    def expand(self, keep, shape, out_dim=0):
        o = shape[out_dim] if len(shape) else 1
        k = int(torch.Size(shape).numel()) // max(o, 1)
        return _unrows(keep.reshape(o, 1).expand(o, k), shape, out_dim)


class NM(Pattern):
    """Keep the ``n`` best of every ``m`` consecutive weights along the input dimension.

    Args:
        n: weights kept per group, 1 <= n < m.
        m: group length; the input dimension must be divisible by it.
    """

    def __init__(self, n: int, m: int):
        if not (1 <= n < m):
            raise ValueError(f"pattern='{n}:{m}': need 1 <= N < M, e.g. '2:4'")
        self.n, self.m = n, m
        self.name = f"{n}:{m}"
        self.fixed_sparsity = 1.0 - n / m

    def check(self, shape, fqn, out_dim=0, in_dim=1):
        if in_dim is None:
            raise ValueError(
                f"pattern='{self.name}' needs a weight with an input dimension; '{fqn}' has shape "
                f"{tuple(shape)}. Exclude it, e.g. exclude='{fqn}'"
            )
        if shape[in_dim] % self.m:
            raise ValueError(
                f"pattern='{self.name}' needs the input dimension of '{fqn}' (size {shape[in_dim]}, dim "
                f"{in_dim} of {tuple(shape)}) to be divisible by {self.m}; exclude it or pick an M that divides it"
            )

    def mask(self, scores: torch.Tensor, in_dim: int) -> torch.Tensor:
        """Element mask keeping the top ``n`` of each run of ``m`` (ties: the earlier one)."""
        moved = scores.movedim(in_dim, -1)
        groups = moved.reshape(-1, self.m)
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, order[:, : self.n], True)
        return keep.reshape(moved.shape).movedim(-1, in_dim)


def get_pattern(pattern: str | Pattern) -> Pattern:
    """Parse ``"unstructured"``, ``"N:M"``, ``"block:RxC"`` or ``"channel"`` (or pass a Pattern through).

    Raises:
        ValueError: the string is none of those forms.

    Example:
        >>> get_pattern("2:4").fixed_sparsity
        0.5
    """
    if isinstance(pattern, Pattern):
        return pattern
    kind, *args = parse_pattern(pattern)
    return {"unstructured": Unstructured, "channel": Channel, "nm": NM, "block": Block}[kind](*args)
