"""Coupled channel groups: units that must go together, gathered into groups of like units.

A *unit* is one connected component of channel slots (see :mod:`prunekit.structured.trace`): one
output channel of a convolution with the matching batch-norm entries and the next layer's input
channel, or one attention head with its q/k/v rows and output columns. Units with the same members
(same tensors, same dimensions, same counts) form a :class:`Group`; a sparsity (the fraction of units
removed) applies to each group's units. Which groups may shrink at all: :mod:`prunekit.structured.select`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.structured.select import Selection, select
from prunekit.structured.trace import Trace, trace
from prunekit.targets import Selector

__all__ = ["Group", "groups", "build_groups"]


@dataclass
class Group:
    """Like units that must be pruned together.

    Attributes:
        members: ``(tensor fqn, dim)`` pairs a unit removes indices from.
        index: per member, an ``(units, indices per unit)`` array of the indices each unit removes.
        width: the most indices one unit removes from one tensor (1 for a channel, 64 for a
            64-wide head); ``round_to`` counts channels, so it rounds ``kept units * width``.
        prunable: False when pinned; ``reason`` says why.
        kind: ``"channels"``, ``"heads"`` (units spanning several rows of two or more Linear layers) or ``"units"``.
    """

    members: list[tuple[str, int]]
    index: dict[tuple[str, int], np.ndarray]
    width: int
    prunable: bool = True
    reason: str = ""
    kind: str = "channels"

    def __len__(self) -> int:
        return len(next(iter(self.index.values())))

    @property
    def units(self) -> list[dict[tuple[str, int], np.ndarray]]:
        """Per unit, ``{(fqn, dim): indices}`` (built on demand, for inspection)."""
        return [{k: v[u] for k, v in self.index.items()} for u in range(len(self))]

    def __str__(self) -> str:
        main = ", ".join(f"{n}[{d}]" for n, d in self.members[:4]) + (" ..." if len(self.members) > 4 else "")
        state = "prunable" if self.prunable else f"kept: {self.reason}"
        return f"{len(self)} {self.kind} x {self.width}: {main} ({state})"


def build_groups(model: nn.Module, t: Trace, selection: Selection | None = None) -> list[Group]:
    """Turn a trace into groups (pinned ones included, with the reason); ``selection`` (default:
    everything) keeps the groups it does not select, with the reason."""
    comp = _settle_splits(t)
    reasons: dict[int, str] = {}
    for ids, why in t.pins:
        for c in np.unique(comp[ids]):
            reasons.setdefault(int(c), why)
    sizes = np.bincount(comp, minlength=len(comp))
    keys = list(t.keys)
    owner, index, compo = [np.asarray(t.owner)], [np.asarray(t.index)], [comp]
    for fqn, ids in t.elements.items():  # parameters used as activations: one slicing dimension, or pin
        c = comp[ids.numpy()]
        tied = sizes[c] > 1
        if not tied.any():
            continue
        dim = _slice_dim(c, tied)
        if dim is None:
            for k in np.unique(c[tied]):
                reasons.setdefault(int(k), f"parameter {fqn} is used along more than one channel dimension")
            continue
        keys.append((fqn, dim))
        moved = np.moveaxis(c, dim, 0).reshape(c.shape[dim], -1)
        tmask = np.moveaxis(tied, dim, 0).reshape(c.shape[dim], -1)
        rows = [i for i in range(c.shape[dim]) if tmask[i].any()]
        owner.append(np.full(len(rows), len(keys) - 1))
        index.append(np.asarray(rows, dtype=np.int64))
        compo.append(np.asarray([moved[i][tmask[i]][0] for i in rows], dtype=np.int64))
    owner, index, compo = np.concatenate(owner), np.concatenate(index), np.concatenate(compo)
    keep = owner >= 0
    owner, index, compo = owner[keep], index[keep], compo[keep]
    order = np.lexsort((index, owner, compo))
    owner, index, compo = owner[order], index[order], compo[order]
    k = len(keys) + 1
    runs, starts, counts = np.unique(compo * k + owner, return_index=True, return_counts=True)
    run_comp, run_owner = runs // k, runs % k
    comps, first, nruns = np.unique(run_comp, return_index=True, return_counts=True)
    verdicts: dict[tuple, str] = {}
    collected: dict[Any, list] = {}
    for c, a, n in zip(comps.tolist(), first.tolist(), nruns.tolist()):
        owners = run_owner[a:a + n].tolist()
        reason = reasons.get(c, "")
        if not reason and selection is not None:
            names = tuple(sorted({keys[o][0] for o in owners}))
            if names not in verdicts:
                verdicts[names] = selection.verdict(names)
            reason = verdicts[names]
        sig = (tuple(owners), tuple(counts[a:a + n].tolist()), reason)
        collected.setdefault(sig, []).append(starts[a:a + n])
    out = []
    for (owners, sizes, reason), run_starts in collected.items():
        run_starts = np.stack(run_starts)  # (units, members)
        index_by_key = {keys[o]: index[run_starts[:, j, None] + np.arange(sz)] for j, (o, sz) in enumerate(zip(owners, sizes))}
        first_key = min(index_by_key)
        order_u = np.argsort(index_by_key[first_key][:, 0], kind="stable")
        index_by_key = {key: v[order_u] for key, v in index_by_key.items()}
        width = max(sizes)
        members = sorted(index_by_key)
        linear_rows = sum(d == 0 and isinstance(_module_of(model, n), nn.Linear) for n, d in members)
        kind = "channels" if width == 1 else "heads" if linear_rows >= 2 or any(
            n in t.attention for n, _ in members) else "units"
        g = Group(members=members, index=index_by_key, width=width, prunable=not reason, reason=reason, kind=kind)
        if g.prunable and len(g) < 2:
            g.prunable, g.reason = False, "a single unit (removing it would empty the layer)"
        out.append(g)
    out.sort(key=lambda g: (not g.prunable, g.members))
    return out


def _settle_splits(t: Trace) -> np.ndarray:
    """Pieces of a sized split must stay equal: whole pieces go, or the same local index from each."""
    comp = t.components()
    for _ in range(8):
        added = False
        for ids in t.splits:
            c = comp[ids]
            whole = all(len(np.unique(row)) == 1 for row in c)
            aligned = all(len(np.unique(col)) == 1 for col in c.T)
            if not whole and not aligned:
                t.edges.append(np.stack([ids[1:].reshape(-1), np.repeat(ids[:1], len(ids) - 1, 0).reshape(-1)], 1))
                added = True
        if not added:
            return comp
        comp = t.components()
    return comp


def _module_of(model: nn.Module, fqn: str) -> nn.Module | None:
    parent = fqn.rpartition(".")[0]
    try:
        return model.get_submodule(parent) if parent else model
    except AttributeError:
        return None


def _slice_dim(c: np.ndarray, tied: np.ndarray) -> int | None:
    """The dimension along which each slice of a parameter's tied elements joins one component."""
    for d in range(c.ndim):
        if c.shape[d] < 2 and c.ndim > 1:
            continue
        moved = np.moveaxis(c, d, 0).reshape(c.shape[d], -1)
        tmask = np.moveaxis(tied, d, 0).reshape(c.shape[d], -1)
        ok = True
        seen = {}
        for i in range(moved.shape[0]):
            vals = np.unique(moved[i][tmask[i]])
            if len(vals) > 1 or (len(vals) == 1 and seen.setdefault(int(vals[0]), i) != i):
                ok = False
                break
        if ok:
            return d
    return None


def groups(model: nn.Module, example_inputs: Any, exclude: Selector = None, *, include: Selector = None) -> list[Group]:
    """The coupled channel groups of ``model``, for inspection. Changes nothing.

    Args:
        model: any module; it runs once (eval and train mode) on ``example_inputs``.
        example_inputs: one input, as :mod:`prunekit.inputs` reads it (a tensor, a tuple of
            positional inputs or a dict of keyword inputs).
        exclude: what must keep its channels, as in :func:`prunekit.prune` (module types, name globs,
            ``(module, fqn) -> bool``); a group coupled to anything excluded is kept.
        include: what may shrink, as in :func:`prunekit.prune` (default: every Linear and Conv
            weight); a group is prunable only when every Linear/Conv weight it touches is selected
            (:mod:`prunekit.structured.select`).

    Returns:
        A list of :class:`Group`, prunable ones first; ``str(group)`` is one line.

    Raises:
        ValueError: a selector that matches nothing (before the model runs), or ``example_inputs``
            that do not run the model.

    Example:
        >>> for g in prunekit.structured.groups(model, torch.randn(1, 3, 224, 224)):
        ...     print(g)
    """
    selection = select(model, include, exclude)
    with torch.no_grad():
        return build_groups(model, trace(model, example_inputs), selection)
