"""Which units a structured prune removes: a :class:`Plan` holds what was decided before the model is
touched (the trace, the groups and their unit scores, how to round) and turns a sparsity into removed
unit positions per group, rounded to ``round_to`` and capped by ``max_sparsity``; ranked across
groups when ``scope="global"``. Scores come from :mod:`~prunekit.structured.scores`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from prunekit.structured.groups import Group
from prunekit.structured.trace import Trace

__all__ = ["Plan"]


@dataclass
class Plan:
    """Everything one ``prune_channels`` call decided before changing the model.

    Attributes:
        example_inputs: what the model runs on (checks, budgets).
        trace: the labelled run; its ``modes`` are the output shapes a rebuilt model must keep.
        groups: every group; ``prunable`` turns False for groups a module's own code keeps.
        scores: per group, one score per unit (None for groups that were not prunable when scored).
        scope: ``"layer"`` (the same sparsity in every group) or ``"global"``.
        round_to: kept channel counts are multiples of this (None: exact).
        max_sparsity: the most any group may lose.
        kept_by_module: why groups were kept after a rebuild failed in a module's own code.
    """

    example_inputs: Any
    trace: Trace
    groups: list[Group]
    scores: list[torch.Tensor | None]
    scope: str = "layer"
    round_to: int | None = 8
    max_sparsity: float = 0.9
    kept_by_module: list[str] = field(default_factory=list)

    @property
    def expected(self) -> dict:
        """Output shapes per mode (train True/False) that the rebuilt model must reproduce."""
        return self.trace.modes

    def removals(self, sparsity: float) -> list[tuple[Group, list[int]]]:
        """Units to remove per prunable group at ``sparsity``: ``[(group, removed unit positions)]``."""
        live = [(g, s) for g, s in zip(self.groups, self.scores) if g.prunable and s is not None]
        if self.scope == "global" and live:
            flat = torch.cat([s / s.mean().clamp_min(1e-12) for _, s in live])
            owner = torch.cat([torch.full((len(s),), i) for i, (_, s) in enumerate(live)])
            order = torch.argsort(flat, stable=True)[: int(round(sparsity * len(flat)))]
            removed = torch.bincount(owner[order], minlength=len(live))
            targets = [len(g) - int(r) for (g, _), r in zip(live, removed)]
        else:
            targets = [len(g) * (1 - sparsity) for g, _ in live]
        out = []
        for (g, s), target in zip(live, targets):
            n = len(g)
            keep = _keep_count(n, target, _step(g, self.round_to), math.ceil(n * (1 - self.max_sparsity)))
            if keep < n:
                out.append((g, torch.argsort(s, stable=True)[: n - keep].tolist()))
        return out


def _step(g: Group, round_to: int | None) -> int:
    if not round_to:
        return 1
    return round_to // math.gcd(round_to, g.width)


def _keep_count(n: int, target_keep: float, step: int, min_keep: int) -> int:
    if n < step:
        return n
    keep = max(step, int(round(target_keep / step)) * step)
    while keep < min_keep:
        keep += step
    return min(n, keep)
