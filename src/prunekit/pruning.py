"""``prunekit.prune``: select targets, score them, rank groups, attach masks.

Ranking is exact and deterministic: at sparsity s over N weights (one layer for ``scope="layer"``,
all targets together for ``"global"``) exactly ``round(s * N)`` weights are pruned for the
unstructured pattern (Python's ``round``, as ``torch.nn.utils.prune`` counts); ties are broken by
position (model order, then flattened index). For blocks and channels whole groups go:
``round(s * groups)`` of them when all groups ranked together have one size; otherwise (channels of
layers with different fan-in, ranked globally) the lowest-scoring groups while each still falls at
least half inside the ``round(s * N)`` weight budget.

The k-th smallest score is found with a selection (``numpy.partition``, O(N)) rather than a sort
or ``topk``, which is what makes global pruning of a 110M-weight model take about a second.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable, Iterable, Mapping, Union

import torch
from torch import nn

from prunekit._checks import fraction
from prunekit.criteria import Criterion, CriterionLike, check_scores, get_criterion
from prunekit.masks import attach, effective, find_mask
from prunekit.patterns import NM, Pattern, get_pattern
from prunekit.report import SparsityReport, sparsity_report
from prunekit.targets import Selector, Target, find_targets, matches

__all__ = ["prune", "Sparsity", "too_thin"]

Sparsity = Union[float, Mapping[str, float], None]
SCOPES = ("global", "layer")


def _plan(sparsity: Sparsity, pattern: Pattern, targets: list[Target], scope: str) -> list[tuple[float, list[Target]]]:
    """Units of ranking: ``[(sparsity, [targets ranked together]), ...]``."""
    fixed = pattern.fixed_sparsity
    if isinstance(sparsity, Mapping):
        if not sparsity:
            raise ValueError("sparsity={} is empty; give {'fqn-glob': fraction, ...} or a float")
        values = {}
        for key, value in sparsity.items():
            if not isinstance(key, str):
                raise TypeError(f"sparsity dict keys must be fqn globs (str), got {key!r}")
            values[key] = fraction(value, f"sparsity[{key!r}]")
        chosen: dict[int, str] = {}
        used = set()
        for i, t in enumerate(targets):
            for key in values:  # later keys override earlier ones
                if any(matches(key, m, mf, n, None) for m, n, _, mf in t.aliases):
                    chosen[i] = key
                    used.add(key)
        unused = [k for k in values if k not in used]
        if unused:
            raise ValueError(
                f"sparsity keys {unused} match no targeted parameter; targets are e.g. "
                f"{[t.fqn for t in targets[:8]]}"
            )
        if fixed is not None:
            bad = {k: v for k, v in values.items() if abs(v - fixed) > 1e-9}
            if bad:
                raise ValueError(f"pattern='{pattern}' always gives sparsity {fixed}; sparsity values {bad} differ")
        units: dict[str, list[Target]] = {}
        for i, key in chosen.items():
            units.setdefault(key, []).append(targets[i])
        if scope == "layer":
            return [(values[k], [t]) for k, ts in units.items() for t in ts]
        return [(values[k], ts) for k, ts in units.items()]
    if sparsity is None:
        if fixed is None:
            raise ValueError(f"sparsity is required for pattern='{pattern}'; pass e.g. sparsity=0.8")
        value = fixed
    else:
        value = fraction(sparsity, "sparsity")
        if fixed is not None and abs(value - fixed) > 1e-9:
            raise ValueError(
                f"pattern='{pattern}' always gives sparsity {fixed}; got sparsity={sparsity}. Omit sparsity "
                f"or pass {fixed}"
            )
    if scope == "layer":
        return [(value, [t]) for t in targets]
    return [(value, targets)]


def _shape(t: Target) -> torch.Size:
    """The weight's shape as forward sees it, without computing the masked weight."""
    pm = find_mask(t.module, t.name)
    return pm.mask.shape if pm is not None else effective(t.module, t.name).shape


def _kth_smallest(flat: torch.Tensor, k: int, scratch: bool) -> float:
    """The k-th smallest value (1-based) of a 1-D tensor, in O(n); ``scratch``: may reorder ``flat``."""
    if flat.device.type == "cpu":
        buf = flat.numpy() if scratch else flat.numpy().copy()
        buf.partition(k - 1)
        return float(buf[k - 1])
    return float(torch.kthvalue(flat, k).values)


def _select_uniform(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Pruned flags for the k lowest entries across ``scores`` (ties: earliest first)."""
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    flat = scores[0] if len(scores) == 1 else torch.cat(scores)
    thr = _kth_smallest(flat, k, scratch=len(scores) > 1)
    del flat
    pruned = [s < thr for s in scores]
    left = k - sum(int(p.sum()) for p in pruned)
    for s, p in zip(scores, pruned):
        if left <= 0:
            break
        ties = torch.nonzero(s == thr).flatten()[:left]
        p[ties] = True
        left -= ties.numel()
    return pruned


def _select_sized(scores: list[torch.Tensor], sizes: list[int], budget: int) -> list[torch.Tensor]:
    """Pruned flags for groups of unequal size: lowest first while half of each fits the budget."""
    flat = torch.cat(scores)
    size = torch.cat([torch.full_like(s, sz, dtype=torch.long) for s, sz in zip(scores, sizes)])
    order = torch.sort(flat, stable=True).indices
    before = torch.cumsum(size[order], 0) - size[order]
    take = order[2 * before + size[order] < 2 * budget]
    pruned = torch.zeros_like(flat, dtype=torch.bool)
    pruned[take] = True
    return list(pruned.split([s.numel() for s in scores]))


def _groups_to_prune(pattern: Pattern, s: float, units: list[tuple], shapes: list[torch.Size]) -> list[torch.Tensor]:
    """For one ranking unit: ``units = [(target, group_scores, old_pruned_groups)]``."""
    sizes = [pattern.group_size(sh, t.out_dim) for (t, _, _), sh in zip(units, shapes)]
    total = sum(int(torch.Size(sh).numel()) for sh in shapes)
    budget = round(s * total)
    scores = [g for _, g, _ in units]
    if len(set(sizes)) == 1:
        n_groups = sum(g.numel() for g in scores)
        pruned = _select_uniform(scores, round(s * n_groups))
    else:
        pruned = _select_sized(scores, sizes, budget)
    for (t, _, old), p in zip(units, pruned):
        if old is not None and bool((old & ~p).any()):
            have = sum(int(o.sum()) * sz for (_, _, o), sz in zip(units, sizes) if o is not None) / max(total, 1)
            raise ValueError(
                f"sparsity={s} is below what is already pruned ({have:.4f} for '{t.fqn}' and the weights "
                "ranked with it); pruning again only adds zeros. Ask for at least that, or start from the "
                "unpruned model"
            )
    return pruned


def prune(
    model: nn.Module,
    sparsity: Sparsity = None,
    criterion: CriterionLike = "magnitude",
    pattern: str | Pattern = "unstructured",
    scope: str = "global",
    include: Selector = None,
    exclude: Selector = None,
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
) -> SparsityReport:
    """Mask the least important weights of ``model`` (reversible until :func:`prunekit.finalize`).

    Changes: attaches a :class:`prunekit.masks.PruningMask` to each targeted weight (or updates the
    one it has). Original values are kept under the mask; nothing else in the model changes. A call
    that is rejected changes nothing.

    Pruning again composes: what was pruned stays pruned, and ``sparsity`` is the total target (so
    ``prune(m, 0.5)`` then ``prune(m, 0.8)`` ends at 80%, not 90%).

    Args:
        model: the model to prune, in place.
        sparsity: fraction of weights to zero, in [0, 1); or ``{fqn-glob: fraction}`` per layer group
            (later keys override earlier ones; targets that match no key are left alone). Optional for
            ``"N:M"``, where it is always 1 - N/M.
        criterion: ``"magnitude"`` | ``"l2"`` | ``"random"`` | ``"taylor"``, a function
            ``(weight, context) -> scores`` or a :class:`prunekit.Criterion` (higher score = keep).
        pattern: ``"unstructured"``, ``"N:M"`` (``"2:4"``), ``"block:RxC"`` (``"block:1x4"``) or
            ``"channel"`` (whole output channels, masked; ``prunekit.structured`` removes them).
        scope: ``"global"`` ranks all targets together (with a dict, all targets under one key);
            ``"layer"`` prunes each target to the same sparsity.
        include: which weights (module types, fqn globs, or ``(module, fqn) -> bool``);
            default: every Linear and Conv weight.
        exclude: which weights to leave alone, same forms.
        data: calibration batches for data-aware criteria (``"taylor"``, ``"wanda"``), each one input
            (see :mod:`prunekit.inputs`); batches with a target are :class:`prunekit.inputs.Labeled`
            (``prunekit.inputs.labeled(loader)`` for a loader of ``(x, y)`` pairs).
        loss_fn: ``loss_fn(output, target)`` (or ``loss_fn(output)`` for batches without a target).

    Returns:
        :class:`prunekit.SparsityReport` of the model after pruning (``seconds``: time taken).

    Raises:
        ValueError / TypeError: bad arguments, with what would work; the model is unchanged.

    Example:
        >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> report = prunekit.prune(model, sparsity=0.8)              # global magnitude
        >>> round(report.sparsity, 2)
        0.8
        >>> prunekit.prune(model, pattern="2:4", exclude="2")         # N:M on the first layer
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is unknown; use one of {list(SCOPES)}")
    started = time.perf_counter()
    pat = get_pattern(pattern)
    crit: Criterion = get_criterion(criterion)
    targets = find_targets(model, include, exclude)
    plan = _plan(sparsity, pat, targets, scope)
    shape = {id(t): _shape(t) for _, ts in plan for t in ts}
    for _, ts in plan:
        for t in ts:
            pat.check(shape[id(t)], t.fqn, t.out_dim, t.in_dim)
    if isinstance(model, nn.parallel.DistributedDataParallel) and any(
        find_mask(t.module, t.name) is None for _, ts in plan for t in ts
    ):
        raise ValueError(
            "prune the model before wrapping it in DistributedDataParallel (or build a prunekit.Pruner "
            "before wrapping): attaching masks gives each weight a new gradient accumulator, which would "
            "silently detach DDP's gradient hooks"
        )
    crit.prepare(model, [t for _, ts in plan for t in ts], data, loss_fn)

    new_masks: list[tuple[Target, torch.Tensor]] = []
    for s, ts in plan:
        units = []
        for t in ts:
            weight = effective(t.module, t.name)
            scores = check_scores(crit.score(weight, crit.context(t)), weight, t.fqn, crit.name)
            pm = find_mask(t.module, t.name)
            if isinstance(pat, NM):
                if pm is None:
                    new_masks.append((t, pat.mask(scores, t.in_dim)))
                else:
                    new_masks.append((t, pat.mask(scores.masked_fill(~pm.mask, -math.inf), t.in_dim) & pm.mask))
                continue
            if pm is None:
                units.append((t, pat.group_scores(scores, t.out_dim), None))
                continue
            group_scores = pat.group_scores(scores.masked_fill(~pm.mask, 0), t.out_dim)
            old_pruned = pat.group_scores(pm.mask.to(torch.float32), t.out_dim) == 0
            units.append((t, group_scores.masked_fill(old_pruned, -math.inf), old_pruned))
        if units:
            pruned = _groups_to_prune(pat, s, units, [shape[id(t)] for t, _, _ in units])
            for (t, _, _), p in zip(units, pruned):
                keep = pat.expand(~p, shape[id(t)], t.out_dim)
                pm = find_mask(t.module, t.name)
                new_masks.append((t, keep & pm.mask if pm is not None else keep))
    for t, keep in new_masks:
        attach(t, keep, str(pat))
    _warn_starved(plan, new_masks)
    report = sparsity_report(model)
    report.seconds = time.perf_counter() - started
    return report


def too_thin(keep: torch.Tensor, sparsity: float) -> bool:
    """Whether a mask keeps under a tenth of the density ``sparsity`` asks for (emptied included):
    what global ranking does to a layer whose weights are all small, a head often."""
    return keep.numel() > 1 and float(keep.sum()) / keep.numel() < (1 - sparsity) / 10


def _warn_starved(plan: list[tuple[float, list[Target]]], new_masks: list[tuple[Target, torch.Tensor]]) -> None:
    """Warn about layers that global ranking emptied, or left with under a tenth of the density asked."""
    asked = {id(t): s for s, ts in plan if len(ts) > 1 for t in ts}
    emptied, starved = [], []
    for t, keep in new_masks:
        if keep.numel() <= 1:
            continue
        if not bool(keep.any()):
            emptied.append(t.fqn)
        elif id(t) in asked and too_thin(keep, asked[id(t)]):
            starved.append(f"{t.fqn} ({1 - float(keep.sum()) / keep.numel():.2%} zeros)")
    if emptied:
        warnings.warn(
            f"pruning removed every weight of {emptied[:5]}: their layers now output only their bias. "
            "Use scope='layer', exclude=..., or a per-layer sparsity dict to keep them",
            stacklevel=3,
        )
    if starved:
        warnings.warn(
            f"global ranking left {starved[:5]} with under a tenth of the weights asked for overall; such layers "
            "barely pass a signal. Use scope='layer', exclude=..., or a per-layer sparsity dict to protect them",
            stacklevel=3,
        )
