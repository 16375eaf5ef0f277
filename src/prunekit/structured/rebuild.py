"""Remove whole channels, neurons and heads: a smaller model that runs as it is.

``prune_channels`` scores each group's units, picks the ones to remove (per group or globally,
rounded so kept channel counts stay multiples of ``round_to``), slices every coupled tensor, and
updates the attributes ``forward`` reads (``in_features``, ``out_channels``, ``groups``,
``num_features``, ``normalized_shape``, ``num_heads``...). It then runs the model on the example
inputs in eval and train mode; if the rebuilt model fails where a module's own code hard-codes a
width, the groups inside modules of that class are kept and it tries again, and if it still fails
the model is restored and the error names the module. Scoring and planning live in
:mod:`~prunekit.structured.plan`, slicing the tensors in :mod:`~prunekit.structured.slicing`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_flatten

from prunekit.structured.groups import Group, _selected, build_groups
from prunekit.structured.macs import Counter, count_macs_params
from prunekit.structured.plan import CRITERIA, plan
from prunekit.structured.slicing import Backup, apply
from prunekit.inputs import call
from prunekit.structured.trace import preserved, trace

__all__ = ["prune_channels", "StructuredReport", "CRITERIA"]


@dataclass
class StructuredReport:
    """What :func:`prune_channels` did.

    ``macs``/``params`` are (before, after); ``layers`` lists ``(tensor fqn, shape before, shape
    after)``; ``groups`` the groups with how many units each kept; ``kept_by_module`` the groups a
    module's own code prevented from shrinking.
    """

    macs: tuple[int, int]
    params: tuple[int, int]
    layers: list[tuple[str, tuple, tuple]]
    groups: list[tuple[Group, int]]
    criterion: str
    scope: str
    ratio: float
    kept_by_module: list[str] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        """MACs before / after (the theoretical speedup)."""
        return self.macs[0] / max(1, self.macs[1])

    def __str__(self) -> str:
        lines = [
            f"structured pruning ({self.criterion}, scope={self.scope}, ratio={self.ratio:.3f} of each group's channels):",
            f"  MACs   {self.macs[0]:>14,} -> {self.macs[1]:>14,}  ({self.macs[1] / max(1, self.macs[0]):.1%}, "
            f"{self.macs_ratio:.2f}x fewer)",
            f"  params {self.params[0]:>14,} -> {self.params[1]:>14,}  ({self.params[1] / max(1, self.params[0]):.1%}); "
            "a channel ratio p removes about 1-(1-p)^2 of a layer's weights when both its sides shrink",
        ]
        width = max([len(n) for n, _, _ in self.layers] + [10])
        for name, before, after in self.layers:
            lines.append(f"  {name:<{width}} {str(tuple(before)):>22} -> {str(tuple(after))}")
        for why in self.kept_by_module:
            lines.append(f"  kept: {why}")
        return "\n".join(lines)


# -- checking --------------------------------------------------------------------------------------


class _Where:
    """Remembers the innermost module running when an exception escapes."""

    def __init__(self, model):
        self.stack, self.failed, self.hooks = [], None, []
        for name, m in model.named_modules():
            self.hooks.append(m.register_forward_pre_hook(lambda mod, a, n=name: self._push(n)))
            self.hooks.append(m.register_forward_hook(lambda mod, a, o: self._pop()))

    def _push(self, name) -> None:
        self.stack.append(name)

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def close(self):
        for h in self.hooks:
            h.remove()


def _shapes(out):
    return [tuple(o.shape) for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]


def _check(model, example_inputs, expected: dict, counter=None) -> str | None:
    """Run eval (and train, when it ran before) mode; returns "module|error" or None.

    ``counter`` (a :class:`Counter`) adds up the eval-mode MACs on the way.
    """
    where = _Where(model)
    try:
        with preserved(model):
            for train, shapes in expected.items():
                model.train(train)
                where.stack.clear()
                try:
                    with torch.no_grad(), (counter if counter is not None and not train else contextlib.nullcontext()):
                        got = _shapes(call(model, example_inputs))
                except Exception as e:
                    name = where.stack[-1] if where.stack else ""
                    return f"{name}|{type(e).__name__}: {e}"
                if got != shapes:
                    return f"|output shapes changed: {shapes} -> {got}"
        return None
    finally:
        where.close()


# -- the API ---------------------------------------------------------------------------------------


def _validate(model, ratio, criterion, scope, round_to, max_ratio, target_macs, target_params):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise TypeError("prune the model before wrapping it in DataParallel/DistributedDataParallel (pass model.module)")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("model has masks or other parametrizations; call prunekit.finalize(model) first")
    budgets = [x for x in (ratio, target_macs, target_params) if x is not None]
    if len(budgets) != 1:
        raise ValueError("give exactly one of ratio=, target_macs= or target_params= (e.g. ratio=0.3)")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1):
        raise ValueError(f"ratio={ratio!r} must be a fraction of channels to remove in [0, 1), e.g. 0.3")
    for name, v in (("target_macs", target_macs), ("target_params", target_params)):
        if v is None:
            continue
        fraction_ok = isinstance(v, float) and math.isfinite(v) and 0 < v <= 1
        count_ok = isinstance(v, int) and not isinstance(v, bool) and v > 1
        if not (fraction_ok or count_ok):
            raise ValueError(f"{name}={v!r} must be a fraction to keep in (0, 1] as a float (e.g. 0.5) or an "
                             f"absolute count as an int (e.g. {name}=2_000_000)")
    if not callable(criterion) and criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is unknown; use one of {CRITERIA} or a function (model, group) -> scores")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope={scope!r} is unknown; use 'layer' (same ratio in every group) or 'global'")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to={round_to!r} must be a positive int (8, 16) or None")
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 0 < max_ratio < 1:
        raise ValueError(f"max_ratio={max_ratio!r} must be in (0, 1): the most any group may lose")


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | None = None,
    criterion: str | Callable = "l2",
    scope: str = "layer",
    round_to: int | None = 8,
    exclude: Any = None,
    max_ratio: float = 0.9,
    target_macs: float | None = None,
    target_params: float | None = None,
    seed: int = 0,
) -> StructuredReport:
    """Remove channels, neurons and attention heads; the model is rebuilt smaller, in place.

    Changes: replaces the pruned parameters and buffers of ``model`` with smaller ones and updates
    module attributes to match; optimizers built before hold the old tensors (build a new one). A
    rejected call leaves the model exactly as it was.

    Args:
        model: any module that runs on ``example_inputs`` (torchvision, timm, Hugging Face, your own).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        ratio: fraction of each group's channels (or heads) to remove, in [0, 1). Removing a
            fraction p of the channels on both sides of a layer removes about 1-(1-p)^2 of its weights.
        criterion: ``"l1"``, ``"l2"`` (norms summed over every coupled tensor), ``"bn_scale"``
            (network slimming: |gamma| of the coupled batch norms), ``"taylor"`` (|w * grad|, run a
            backward first), ``"fpgm"`` (distance to the other units), ``"random"``, or a function
            ``(model, group) -> scores`` (one score per unit; low scores go first).
        scope: ``"layer"``: the same ratio in every group; ``"global"``: units ranked across groups
            (scores normalised by each group's mean).
        round_to: keep channel counts multiples of this (default 8; None for exact ratios).
        exclude: modules whose channels must stay: fqn globs, module types or ``(module, fqn) -> bool``.
        max_ratio: the most any group may lose.
        target_macs, target_params: instead of ``ratio``, a budget: the fraction of MACs (or
            parameters) to keep (e.g. 0.5), or an absolute count when > 1; the ratio is searched.
        seed: for ``criterion="random"``.

    Returns:
        :class:`StructuredReport` with MACs and parameters before and after, per-tensor shapes.

    Raises:
        ValueError / TypeError: bad arguments, inputs that do not run the model, or a rebuilt model
            that fails in a way prunekit cannot fix (the model is restored; the message names the module).

    Example:
        >>> report = prunekit.structured.prune_channels(model, torch.randn(1, 3, 224, 224), ratio=0.5)
        >>> print(report)          # MACs 4.1G -> 1.1G ...
    """
    _validate(model, ratio, criterion, scope, round_to, max_ratio, target_macs, target_params)
    _selected(model, exclude)  # names that match nothing fail here, before anything runs
    with torch.no_grad():
        t = trace(model, example_inputs)
        found = build_groups(model, t, exclude)
    expected = t.modes  # output shapes per mode, from the trace
    macs0, params0 = t.macs, sum(p.numel() for p in model.parameters())
    budget = None
    if ratio is None:
        budget = ("target_macs", target_macs) if target_macs is not None else ("target_params", target_params)
        _prune(copy.deepcopy(model), example_inputs, found, t, 0.5, criterion, scope, round_to, max_ratio, seed,
               expected)  # learn which groups the model's own code keeps, before searching
        goal = target_macs if target_macs is not None else target_params
        base = macs0 if target_macs is not None else params0
        want = goal * base if isinstance(goal, float) else goal
        if want > base:
            name = "target_macs" if target_macs is not None else "target_params"
            raise ValueError(f"{name}={goal!r} asks to keep {want:,.0f}, more than the model has ({base:,}); "
                             "give a smaller count or a fraction in (0, 1]")
        ratio = _search(model, example_inputs, found, t, criterion, scope, round_to, max_ratio, seed,
                        lambda m: count_macs_params(m, example_inputs)[0 if target_macs is not None else 1], want)
    counter = Counter()
    layers, kept = _prune(model, example_inputs, found, t, ratio, criterion, scope, round_to, max_ratio, seed, expected,
                          counter)
    macs1, params1 = counter.macs, sum(p.numel() for p in model.parameters())
    if budget is not None:
        name, got = budget
        achieved = macs1 if name == "target_macs" else params1
        if achieved > 1.1 * want:
            warnings.warn(f"{name}={goal!r} asks for {want:,.0f} but {achieved:,} remain: max_ratio={max_ratio} and the "
                          "groups prunekit must keep (prunekit.structured.groups shows why) bound how far it can go",
                          stacklevel=2)
    model._prunekit_structured = True  # prunekit.save records the new sizes; prunekit.load restores them
    return StructuredReport(macs=(macs0, macs1), params=(params0, params1), layers=layers,
                            groups=[(g, len(g)) for g in found], criterion=getattr(criterion, "__name__", str(criterion)),
                            scope=scope, ratio=float(ratio), kept_by_module=kept)


def _prune(model, example_inputs, found, t, ratio, criterion, scope, round_to, max_ratio, seed, expected, counter=None):
    kept_by_module = []
    for attempt in range(6):
        chosen = plan(model, found, ratio, scope, criterion, round_to, max_ratio, seed)
        backup = Backup()
        layers = apply(model, chosen, t.convs, backup)
        if counter is not None:
            counter.macs = 0
        failure = _check(model, example_inputs, expected, counter)
        if failure is None:
            return layers, kept_by_module
        backup.restore()
        module, _, error = failure.partition("|")
        if not module or not (_keep_inside(model, found, module, wide=False)
                              or _keep_inside(model, found, module, wide=True)):
            raise ValueError(f"the rebuilt model fails in {module or 'the model'!r} ({error}); the model is "
                             "unchanged. Exclude that module (exclude=[...]) or report the model to prunekit.")
        kept_by_module.append(f"{type(model.get_submodule(module)).__name__} modules hard-code a width ({error[:120]})")
    raise ValueError("the rebuilt model kept failing; the model is unchanged")


def _keep_inside(model, found, module: str, wide: bool) -> bool:
    """Pin groups inside every module of the failing module's class (``wide``: groups touching them)."""
    cls = type(model.get_submodule(module))
    roots = [n for n, m in model.named_modules() if type(m) is cls]
    inside = lambda fqn: any(fqn.startswith(r + ".") or not r for r in roots)  # noqa: E731
    changed = False
    for g in found:
        if not g.prunable:
            continue
        hit = [inside(f) for f, _ in g.members]
        if (all(hit) and not wide) or (any(hit) and wide):
            g.prunable, g.reason, changed = False, f"{cls.__name__} hard-codes this width", True
    return changed


def _search(model, example_inputs, found, t, criterion, scope, round_to, max_ratio, seed, measure, want) -> float:
    lo, hi = 0.0, max_ratio
    best = hi
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        chosen = plan(trial, found, mid, scope, criterion, round_to, max_ratio, seed)
        apply(trial, chosen, t.convs, Backup())
        try:
            got = measure(trial)
        except Exception:
            got = float("inf")
        if got <= want:
            best, hi = mid, mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    return best
