"""Which units a structured prune removes: scores per unit (l1, l2, bn_scale, taylor, fpgm, random, or a
function) and the plan that turns a ratio into removed unit positions per group, rounded to
``round_to`` and capped by ``max_ratio``; globally ranked when ``scope="global"``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunekit.structured.groups import Group

__all__ = ["CRITERIA", "plan"]

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "fpgm", "random")


def _per_index(t: torch.Tensor, dim: int, how: str) -> torch.Tensor:
    x = t.detach().float().movedim(dim, 0).reshape(t.shape[dim], -1)
    return x.abs().sum(1) if how == "l1" else x.pow(2).sum(1)


def _scores(model: nn.Module, g: Group, criterion, generator: torch.Generator) -> torch.Tensor:
    params = dict(model.named_parameters())
    n = len(g)
    if callable(criterion):
        out = torch.as_tensor(criterion(model, g), dtype=torch.float64).reshape(-1)
        if out.numel() != n:
            raise ValueError(f"criterion returned {out.numel()} scores for a group of {n} units; return one per unit")
        return out
    if criterion == "random":
        return torch.rand(n, generator=generator, dtype=torch.float64)
    members = [(f, d) for f, d in g.members if f in params]
    if criterion == "bn_scale":
        norms = [(f, d) for f, d in members if f.endswith("weight") and isinstance(_owner(model, f), nn.modules.batchnorm._NormBase)]
        members = norms or members
    total = torch.zeros(n, dtype=torch.float64)
    for fqn, dim in members:
        p = params[fqn]
        if criterion == "taylor":
            if p.grad is None:
                raise ValueError(f"criterion='taylor' needs gradients on {fqn}: run loss.backward() on a batch "
                                 "before prune_channels (or use criterion='l2')")
            per = (p.detach() * p.grad).abs().float().movedim(dim, 0).reshape(p.shape[dim], -1).sum(1)
            per_unit = per[torch.as_tensor(g.index[(fqn, dim)])].sum(1)
        elif criterion == "fpgm":
            if p.dim() < 2:
                continue
            idx = torch.as_tensor(g.index[(fqn, dim)])
            vecs = p.detach().float().movedim(dim, 0)[idx].reshape(len(idx), -1)
            per_unit = torch.cdist(vecs, vecs).sum(1)
        else:
            how = "l1" if criterion in ("l1", "bn_scale") else "l2"
            per = _per_index(p, dim, how)
            per_unit = per[torch.as_tensor(g.index[(fqn, dim)])].sum(1)
            if how == "l2":
                per_unit = per_unit.sqrt()
        per_unit = per_unit.double()
        total += per_unit / per_unit.mean().clamp_min(1e-12)
    return total


def _owner(model: nn.Module, fqn: str) -> nn.Module:
    parent = fqn.rpartition(".")[0]
    return model.get_submodule(parent) if parent else model


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


def plan(model, groups: list[Group], ratio: float, scope: str, criterion, round_to, max_ratio, seed=0):
    """Units to remove per prunable group: ``[(group, removed unit positions)]``."""
    gen = torch.Generator().manual_seed(seed)
    live = [g for g in groups if g.prunable]
    scores = [_scores(model, g, criterion, gen) for g in live]
    out = []
    if scope == "global" and live:
        flat = torch.cat([s / s.mean().clamp_min(1e-12) for s in scores])
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
        order = torch.argsort(flat, stable=True)[: int(round(ratio * len(flat)))]
        removed = torch.bincount(owner[order], minlength=len(live))
        targets = [len(g) - int(r) for g, r in zip(live, removed)]
    else:
        targets = [len(g) * (1 - ratio) for g in live]
    for g, s, target in zip(live, scores, targets):
        n = len(g)
        keep = _keep_count(n, target, _step(g, round_to), math.ceil(n * (1 - max_ratio)))
        if keep < n:
            out.append((g, torch.argsort(s, stable=True)[: n - keep].tolist()))
    return out
