"""Remove whole channels, neurons and heads: a smaller model that runs as it is.

``prune_channels`` selects what may shrink (``include`` / ``exclude``, as :func:`prunekit.prune`:
:mod:`~prunekit.structured.select`), scores each group's units (an element criterion of
:mod:`prunekit.criteria` reduced over each unit: :mod:`~prunekit.structured.scores`), picks the
units to remove (per group or globally, rounded so kept channel counts stay multiples of
``round_to``: :class:`~prunekit.structured.plan.Plan`), slices every coupled tensor, and updates the
attributes ``forward`` reads (``in_features``, ``out_channels``, ``groups``, ``num_features``,
``normalized_shape``, ``num_heads``...: :mod:`~prunekit.structured.slicing`). It then runs the model
on the example inputs in eval and train mode; if the rebuilt model fails where a module's own code
hard-codes a width, the groups inside modules of that class are kept and it tries again, and if it
still fails the model is restored and the error names the module (:mod:`~prunekit.structured.check`).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit._compat import REMOVED_IN, old_kwargs
from prunekit._progress import progress as progress_bar
from prunekit.structured.check import check, keep_inside
from prunekit.structured.groups import Group, build_groups
from prunekit.structured.macs import Counter, count_macs_params
from prunekit.structured.plan import Plan
from prunekit.structured.scores import CRITERIA, criterion_name, get_channel_criterion, score_groups
from prunekit.structured.select import select
from prunekit.structured.slicing import Backup, apply
from prunekit.structured.trace import trace
from prunekit.targets import Selector

__all__ = ["prune_channels", "StructuredReport", "CRITERIA"]

RENAMED = {"ratio": "sparsity", "max_ratio": "max_sparsity"}  # deprecated keyword -> new name (until 0.3)


@dataclass
class StructuredReport:
    """What :func:`prune_channels` did.

    Attributes:
        macs: MACs (before, after).
        params: parameter counts (before, after).
        layers: ``(tensor fqn, shape before, shape after)`` per tensor that shrank.
        groups: every group, with how many units it kept.
        criterion: the criterion's name.
        scope: ``"layer"`` or ``"global"``.
        sparsity: the fraction of each group's units asked to go (searched for a budget).
        kept_by_module: why groups were kept where a module's own code hard-codes a width.
    """

    macs: tuple[int, int]
    params: tuple[int, int]
    layers: list[tuple[str, tuple, tuple]]
    groups: list[tuple[Group, int]]
    criterion: str
    scope: str
    sparsity: float
    kept_by_module: list[str] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        """MACs before / after (the theoretical speedup)."""
        return self.macs[0] / max(1, self.macs[1])

    @property
    def ratio(self) -> float:
        """Deprecated: :attr:`sparsity` (goes in prunekit 0.3)."""
        warnings.warn(f"StructuredReport.ratio is deprecated and goes in prunekit {REMOVED_IN}; use .sparsity",
                      DeprecationWarning, stacklevel=2)
        return self.sparsity

    def __str__(self) -> str:
        lines = [
            f"structured pruning ({self.criterion}, scope={self.scope}, sparsity={self.sparsity:.3f} of each group's "
            "channels):",
            f"  MACs   {self.macs[0]:>14,} -> {self.macs[1]:>14,}  ({self.macs[1] / max(1, self.macs[0]):.1%}, "
            f"{self.macs_ratio:.2f}x fewer)",
            f"  params {self.params[0]:>14,} -> {self.params[1]:>14,}  ({self.params[1] / max(1, self.params[0]):.1%}); "
            "removing a fraction p of the channels removes about 1-(1-p)^2 of a layer's weights when both its sides "
            "shrink",
        ]
        width = max([len(n) for n, _, _ in self.layers] + [10])
        for name, before, after in self.layers:
            lines.append(f"  {name:<{width}} {str(tuple(before)):>22} -> {str(tuple(after))}")
        for why in self.kept_by_module:
            lines.append(f"  kept: {why}")
        return "\n".join(lines)


def _validate(model, sparsity, criterion, scope, round_to, max_sparsity, target_macs, target_params, spelled):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise TypeError("prune the model before wrapping it in DataParallel/DistributedDataParallel (pass model.module)")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("model has masks or other parametrizations; call prunekit.finalize(model) first")
    budgets = [x for x in (sparsity, target_macs, target_params) if x is not None]
    if len(budgets) != 1:
        raise ValueError("give exactly one of sparsity=, target_macs= or target_params= (e.g. sparsity=0.3)")
    name = spelled["sparsity"]
    if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                 or not 0 <= sparsity < 1):
        raise ValueError(f"{name}={sparsity!r} must be a fraction of channels to remove in [0, 1), e.g. 0.3")
    for name, v in (("target_macs", target_macs), ("target_params", target_params)):
        if v is None:
            continue
        fraction_ok = isinstance(v, float) and math.isfinite(v) and 0 < v <= 1
        count_ok = isinstance(v, int) and not isinstance(v, bool) and v > 1
        if not (fraction_ok or count_ok):
            raise ValueError(f"{name}={v!r} must be a fraction to keep in (0, 1] as a float (e.g. 0.5) or an "
                             f"absolute count as an int (e.g. {name}=2_000_000)")
    get_channel_criterion(criterion)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope={scope!r} is unknown; use 'layer' (the same sparsity in every group) or 'global'")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to={round_to!r} must be a positive int (8, 16) or None")
    name = spelled["max_sparsity"]
    if isinstance(max_sparsity, bool) or not isinstance(max_sparsity, (int, float)) or not 0 < max_sparsity < 1:
        raise ValueError(f"{name}={max_sparsity!r} must be in (0, 1): the most any group may lose")


def _renamed(given: dict, sparsity, max_sparsity) -> tuple[Any, Any, dict]:
    """``sparsity``, ``max_sparsity`` with the deprecated ``ratio=`` / ``max_ratio=`` (``given``, under
    their new names) folded in, and the name each was given under (errors use the caller's spelling)."""
    spelled = {"sparsity": "sparsity", "max_sparsity": "max_sparsity"}
    for old, new in RENAMED.items():
        if new not in given:
            continue
        current = sparsity if new == "sparsity" else max_sparsity
        if current is not None and not (new == "max_sparsity" and current == 0.9):
            raise TypeError(f"prune_channels() got {new}= and {old}= (its deprecated name); pass {new}= only")
        spelled[new] = old
        if new == "sparsity":
            sparsity = given[new]
        else:
            max_sparsity = given[new]
    return sparsity, max_sparsity, spelled


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    sparsity: float | None = None,
    criterion: Any = "l2",
    scope: str = "layer",
    round_to: int | None = 8,
    exclude: Selector = None,
    max_sparsity: float = 0.9,
    target_macs: float | None = None,
    target_params: float | None = None,
    seed: int = 0,
    *,
    include: Selector = None,
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    progress: bool = True,
    **deprecated,
) -> StructuredReport:
    """Remove channels, neurons and attention heads; the model is rebuilt smaller, in place.

    Changes: replaces the pruned parameters and buffers of ``model`` with smaller ones and updates
    module attributes to match; optimizers built before hold the old tensors (build a new one). A
    rejected call leaves the model exactly as it was.

    Args:
        model: any module that runs on ``example_inputs`` (torchvision, timm, Hugging Face, your own).
        example_inputs: one input, as :mod:`prunekit.inputs` reads it (a tensor, a tuple of
            positional inputs or a dict of keyword inputs).
        sparsity: fraction of each group's channels (or heads) to remove, in [0, 1). Removing a
            fraction p of the channels on both sides of a layer removes about 1-(1-p)^2 of its weights.
        criterion: ``"l1"``, ``"l2"`` (norms over every coupled tensor), ``"bn_scale"`` (network
            slimming: |gamma| of the coupled batch norms), ``"taylor"`` (|w * grad|, from ``data`` or
            a backward run first), ``"fpgm"`` (distance to the other units), ``"random"``; an element
            criterion of :mod:`prunekit.criteria` (a name, a :class:`prunekit.Criterion` or a function
            ``(weight, context) -> scores``), reduced over each unit's elements; or a
            :class:`~prunekit.structured.scores.UnitCriterion` scoring whole units. Low scores go first.
            See :mod:`prunekit.structured.scores`.
        scope: ``"layer"``: the same sparsity in every group; ``"global"``: units ranked across groups
            (scores normalised by each group's mean).
        round_to: keep channel counts multiples of this (default 8; None for exact sparsities).
        exclude: what must keep its channels, as in :func:`prunekit.prune` (module types, name globs,
            ``(module, fqn) -> bool``); every group coupled to something excluded is kept.
        max_sparsity: the most any group may lose.
        target_macs, target_params: instead of ``sparsity``, a budget: the fraction of MACs (or
            parameters) to keep (e.g. 0.5), or an absolute count when > 1; the sparsity is searched.
        seed: for ``criterion="random"``.
        include: what may shrink, as in :func:`prunekit.prune` (default: every Linear and Conv
            weight; a glob that matches nothing is an error). A group shrinks only when every
            Linear/Conv weight it touches is selected, so ``include="layer1"`` changes nothing outside
            ``layer1`` (:mod:`prunekit.structured.select`).
        data, loss_fn: calibration batches and loss for data-aware criteria (``"taylor"``), as in
            :func:`prunekit.prune`.
        progress: show progress (tqdm on a terminal, a few lines in logs) while the rebuilt model is
            checked and a budget is searched.
        **deprecated: ``ratio=`` (now ``sparsity=``) and ``max_ratio=`` (now ``max_sparsity=``),
            accepted with a ``DeprecationWarning`` until prunekit 0.3.

    Returns:
        :class:`StructuredReport` with MACs and parameters before and after, per-tensor shapes.

    Raises:
        ValueError / TypeError: bad arguments, inputs that do not run the model, or a rebuilt model
            that fails in a way prunekit cannot fix (the model is restored; the message names the module).

    Example:
        >>> report = prunekit.structured.prune_channels(model, torch.randn(1, 3, 224, 224), sparsity=0.5)
        >>> print(report)          # MACs 4.1G -> 1.1G ...
    """
    given = old_kwargs("prune_channels", deprecated, RENAMED)  # warns once per old name, at the caller
    sparsity, max_sparsity, spelled = _renamed(given, sparsity, max_sparsity)
    _validate(model, sparsity, criterion, scope, round_to, max_sparsity, target_macs, target_params, spelled)
    selection = select(model, include, exclude)  # a selector that matches nothing fails here, before anything runs
    with torch.no_grad():
        t = trace(model, example_inputs)
        found = build_groups(model, t, selection)
    scores = score_groups(model, found, criterion, seed, data, loss_fn)
    plan = Plan(example_inputs, t, found, scores, scope, round_to, max_sparsity)
    macs0, params0 = t.macs, sum(p.numel() for p in model.parameters())
    bar = progress_bar(desc="prune_channels", unit="run", enabled=progress)
    try:
        budget = None
        if sparsity is None:
            name = "target_macs" if target_macs is not None else "target_params"
            goal = target_macs if target_macs is not None else target_params
            base = macs0 if target_macs is not None else params0
            want = goal * base if isinstance(goal, float) else goal
            if want > base:
                raise ValueError(f"{name}={goal!r} asks to keep {want:,.0f}, more than the model has ({base:,}); "
                                 "give a smaller count or a fraction in (0, 1]")
            budget = (name, goal, want)
            _rebuild(copy.deepcopy(model), plan, 0.5, bar)  # learn which groups the model's own code keeps
            sparsity = _search(model, plan, bar, want,
                               lambda m: count_macs_params(m, example_inputs)[0 if target_macs is not None else 1])
        counter = Counter()
        layers, chosen = _rebuild(model, plan, sparsity, bar, counter)
    finally:
        bar.close()
    macs1, params1 = counter.macs, sum(p.numel() for p in model.parameters())
    if budget is not None:
        name, goal, want = budget
        achieved = macs1 if name == "target_macs" else params1
        if achieved > 1.1 * want:
            warnings.warn(f"{name}={goal!r} asks for {want:,.0f} but {achieved:,} remain: {spelled['max_sparsity']}="
                          f"{max_sparsity} and the groups prunekit must keep (prunekit.structured.groups shows why) "
                          "bound how far it can go", stacklevel=2)
    model._prunekit_structured = True  # prunekit.save records the new sizes; prunekit.load restores them
    removed = {id(g): len(units) for g, units in chosen}
    return StructuredReport(macs=(macs0, macs1), params=(params0, params1), layers=layers,
                            groups=[(g, len(g) - removed.get(id(g), 0)) for g in found],
                            criterion=criterion_name(criterion), scope=scope, sparsity=float(sparsity),
                            kept_by_module=list(plan.kept_by_module))


def _rebuild(model: nn.Module, plan: Plan, sparsity: float, bar, counter: Counter | None = None):
    """Apply ``plan`` at ``sparsity`` and check the result; where a module's own code fails, keep
    its groups and try again. Returns ``(layers changed, [(group, removed units)])``."""
    for _ in range(6):
        chosen = plan.removals(sparsity)
        backup = Backup()
        layers = apply(model, chosen, plan.trace.convs, backup)
        if counter is not None:
            counter.macs = 0
        failure = check(model, plan.example_inputs, plan.expected, counter)
        bar.update(1)
        if failure is None:
            return layers, chosen
        backup.restore()
        module, _, error = failure.partition("|")
        if not module or not (keep_inside(model, plan.groups, module, wide=False)
                              or keep_inside(model, plan.groups, module, wide=True)):
            raise ValueError(f"the rebuilt model fails in {module or 'the model'!r} ({error}); the model is "
                             "unchanged. Exclude that module (exclude=[...]) or report the model to prunekit.")
        why = f"{type(model.get_submodule(module)).__name__} modules hard-code a width ({error[:120]})"
        if why not in plan.kept_by_module:
            plan.kept_by_module.append(why)
    raise ValueError("the rebuilt model kept failing; the model is unchanged")


def _search(model: nn.Module, plan: Plan, bar, want: float, measure: Callable[[nn.Module], int]) -> float:
    """The smallest sparsity whose rebuilt model measures at most ``want`` (bisection on copies)."""
    lo, hi = 0.0, plan.max_sparsity
    best = hi
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        apply(trial, plan.removals(mid), plan.trace.convs, Backup())
        try:
            got = measure(trial)
        except Exception:
            got = float("inf")
        bar.update(1)
        if got <= want:
            best, hi = mid, mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    return best
