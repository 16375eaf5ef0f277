"""Unit scores: prunekit's element criteria (:mod:`prunekit.criteria`), reduced over each unit.

A channel criterion scores every element of every parameter a group touches with an element
criterion (``get_criterion``: ``"magnitude"``, ``"l2"``, ``"taylor"``, ``"random"``, a
:class:`prunekit.Criterion`, or a function ``(weight, context) -> scores``), then reduces: within
each tensor, the sum over the unit's slices (the L1 norm for ``|w|``, the squared L2 norm for
``w²``); across the tensors of a group, the sum of each tensor's per-unit values divided by their
mean, so that a 3x3 kernel and a batch-norm scale weigh alike. Low scores go first.

The names :func:`prune_channels <prunekit.structured.prune_channels>` takes (:data:`CRITERIA`):

* ``"l1"`` (or ``"magnitude"``): ``magnitude`` summed, the L1 norm of the unit's weights;
* ``"l2"``: ``l2`` (w²) summed, then the square root: the L2 norm;
* ``"bn_scale"``: ``magnitude`` of the batch-norm scales (gamma) the unit touches only (network
  slimming), of every tensor when it touches none;
* ``"taylor"``: ``taylor`` (|w * dL/dw|) summed; gradients from ``data=`` and ``loss_fn=``, or the
  ``.grad`` already there;
* ``"random"``: ``random`` (seeded) summed;
* ``"fpgm"``: the one that is not a reduction: the distance from each unit's weight vectors to the
  other units' (filter pruning via the geometric median), which keeps the units least like the rest.

A function that scores whole units instead, ``(model, group) -> one score per unit``, is passed as
:class:`UnitCriterion`; until prunekit 0.3 a plain function of that form still works, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from prunekit._compat import REMOVED_IN
from prunekit.criteria import CRITERIA as ELEMENT_CRITERIA
from prunekit.criteria import Criterion, Random, check_scores, get_criterion
from prunekit.structured.groups import Group
from prunekit.targets import param_index

__all__ = ["ChannelCriterion", "UnitCriterion", "CRITERIA", "get_channel_criterion", "score_groups", "reduce_units"]


@dataclass(frozen=True)
class ChannelCriterion:
    """An element criterion reduced over units.

    Attributes:
        element: a name of :data:`prunekit.criteria.CRITERIA`, a :class:`prunekit.Criterion`, or a
            function ``(weight, context) -> scores``; None for ``"fpgm"``, which compares weight vectors.
        root: take the square root of each tensor's per-unit sum (the L2 norm from ``w²``).
        norms_only: score only the batch-norm scales the unit touches, when it touches any.
    """

    element: Any
    root: bool = False
    norms_only: bool = False


@dataclass(frozen=True)
class UnitCriterion:
    """A function that scores whole units: ``fn(model, group)`` returns one score per unit of
    ``group`` (a :class:`prunekit.structured.Group`); low scores go first.

    Example:
        >>> prune_channels(model, x, sparsity=0.5, criterion=UnitCriterion(lambda m, g: my_scores(g)))
    """

    fn: Callable[[nn.Module, Group], Any]


CRITERIA: dict[str, ChannelCriterion] = {
    "l1": ChannelCriterion("magnitude"),
    "l2": ChannelCriterion("l2", root=True),
    "bn_scale": ChannelCriterion("magnitude", norms_only=True),
    "taylor": ChannelCriterion("taylor"),
    "fpgm": ChannelCriterion(None),
    "random": ChannelCriterion("random"),
}
NOT_PER_CHANNEL = {"wanda": "it scales Linear inputs by their norms over data, and has no channel form"}


def names() -> list[str]:
    """Every criterion name prune_channels takes."""
    return sorted(set(CRITERIA) | set(ELEMENT_CRITERIA) - set(NOT_PER_CHANNEL))


def get_channel_criterion(criterion: Any) -> ChannelCriterion | UnitCriterion:
    """A name, an element criterion or a :class:`UnitCriterion`, as what scores units.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or one with no channel form.
    """
    if isinstance(criterion, (ChannelCriterion, UnitCriterion)):
        return criterion
    if isinstance(criterion, str):
        key = criterion.lower()
        if key in CRITERIA:
            return CRITERIA[key]
        if key in NOT_PER_CHANNEL:
            raise ValueError(f"criterion={criterion!r} does not score channels: {NOT_PER_CHANNEL[key]}; use 'l2' or "
                             "'taylor'")
        if key in ELEMENT_CRITERIA:
            return ChannelCriterion(key)
        raise ValueError(f"criterion={criterion!r} is unknown; use one of {names()}, a prunekit.Criterion or a "
                         "function (weight, context) -> scores (UnitCriterion(fn) for (model, group) -> unit scores)")
    if isinstance(criterion, Criterion) or (isinstance(criterion, type) and issubclass(criterion, Criterion)) \
            or callable(criterion):
        return ChannelCriterion(criterion)
    raise TypeError(f"criterion must be a name {names()}, a prunekit.Criterion, a function (weight, context) -> "
                    f"scores or a UnitCriterion, got {type(criterion).__name__}")


def criterion_name(criterion: Any) -> str:
    """How a report names ``criterion``: its name, a Criterion's ``name``, a function's ``__name__``."""
    if isinstance(criterion, str):
        return criterion
    if isinstance(criterion, ChannelCriterion):
        criterion = criterion.element
    if isinstance(criterion, UnitCriterion):
        criterion = criterion.fn
    if isinstance(criterion, Criterion) or (isinstance(criterion, type) and issubclass(criterion, Criterion)):
        return criterion.name
    return getattr(criterion, "__name__", None) or str(criterion)


def reduce_units(scores: torch.Tensor, dim: int, index: Any, root: bool = False) -> torch.Tensor:
    """Per unit, the sum of ``scores`` over the unit's slices of dimension ``dim``.

    Args:
        scores: element scores shaped like one parameter.
        dim: the dimension the units index.
        index: ``(units, indices per unit)``: the indices of ``dim`` each unit removes (a group's
            ``index[(fqn, dim)]``).
        root: the square root of each sum (an L2 norm when ``scores`` are ``w²``).

    Example:
        >>> w = torch.randn(8, 4)
        >>> reduce_units(w.square(), 0, torch.arange(8)[:, None], root=True)  # == w.norm(dim=1)
    """
    per_index = scores.movedim(dim, 0).reshape(scores.shape[dim], -1).sum(1)
    per_unit = per_index[torch.as_tensor(index)].sum(1)
    return per_unit.sqrt() if root else per_unit


def score_groups(model: nn.Module, groups: list[Group], criterion: Any, seed: int = 0, data: Iterable | None = None,
                 loss_fn: Callable | None = None) -> list[torch.Tensor | None]:
    """One float64 score per unit for each prunable group (None for the others), aligned with ``groups``.

    Changes nothing (a criterion's :meth:`~prunekit.Criterion.prepare` leaves the model as it was).

    Raises:
        ValueError: what the criterion raises (``"taylor"`` without gradients or data), or scores of
            the wrong shape.
    """
    live = [g for g in groups if g.prunable]
    out: list[torch.Tensor | None] = [None] * len(groups)
    if not live:
        return out
    how = get_channel_criterion(criterion)
    if isinstance(how, ChannelCriterion) and how.element is not None and _plain_function(how.element):
        how = _function_form(model, live[0], how)
    params = dict(model.named_parameters())
    if isinstance(how, UnitCriterion):
        scored = [_unit_scores(model, g, how.fn) for g in live]
    elif how.element is None:
        scored = [_fpgm(model, params, g) for g in live]
    else:
        scored = _reduced(model, params, live, how, seed, data, loss_fn)
    at = {id(g): i for i, g in enumerate(groups)}
    for g, s in zip(live, scored):
        out[at[id(g)]] = s
    return out


def _plain_function(element: Any) -> bool:
    return callable(element) and not isinstance(element, (Criterion, type))


def _param_members(model: nn.Module, params: dict, g: Group, norms_only: bool = False) -> list[tuple[str, int]]:
    """The members of ``g`` that are parameters (``params``: the model's, by name), not buffers."""
    members = [(f, d) for f, d in g.members if f in params]
    if norms_only:
        norms = [(f, d) for f, d in members
                 if f.endswith("weight") and isinstance(_owner(model, f), nn.modules.batchnorm._NormBase)]
        members = norms or members
    return members


def _owner(model: nn.Module, fqn: str) -> nn.Module:
    parent = fqn.rpartition(".")[0]
    return model.get_submodule(parent) if parent else model


def _element(how: ChannelCriterion, seed: int) -> Criterion:
    if isinstance(how.element, str) and how.element == "random":
        return Random(seed)
    return get_criterion(how.element)


def _reduced(model, params: dict, live: list[Group], how: ChannelCriterion, seed: int, data,
             loss_fn) -> list[torch.Tensor]:
    crit = _element(how, seed)
    index = param_index(model)
    members = [_param_members(model, params, g, how.norms_only) for g in live]
    used = {id(index[f]): index[f] for ms in members for f, _ in ms}
    crit.prepare(model, list(used.values()), data, loss_fn)
    cache: dict[str, torch.Tensor] = {}
    out = []
    for g, ms in zip(live, members):
        total = torch.zeros(len(g), dtype=torch.float64)
        for fqn, dim in ms:
            if fqn not in cache:
                target = index[fqn]
                weight = target.param.detach()
                cache[fqn] = check_scores(crit.score(weight, crit.context(target)), weight, fqn, crit.name)
            per_unit = reduce_units(cache[fqn], dim, g.index[(fqn, dim)], how.root).double()
            total += per_unit / per_unit.mean().clamp_min(1e-12)
        out.append(total)
    return out


def _fpgm(model: nn.Module, params: dict, g: Group) -> torch.Tensor:
    total = torch.zeros(len(g), dtype=torch.float64)
    for fqn, dim in _param_members(model, params, g):
        p = params[fqn]
        if p.dim() < 2:
            continue
        idx = torch.as_tensor(g.index[(fqn, dim)])
        vecs = p.detach().float().movedim(dim, 0)[idx].reshape(len(idx), -1)
        per_unit = torch.cdist(vecs, vecs).sum(1).double()
        total += per_unit / per_unit.mean().clamp_min(1e-12)
    return total


def _unit_scores(model: nn.Module, g: Group, fn: Callable) -> torch.Tensor:
    out = torch.as_tensor(fn(model, g), dtype=torch.float64).reshape(-1)
    if out.numel() != len(g):
        raise ValueError(f"criterion returned {out.numel()} scores for a group of {len(g)} units; return one per unit")
    return out


def _function_form(model: nn.Module, g: Group, how: ChannelCriterion) -> ChannelCriterion | UnitCriterion:
    """A plain function is an element criterion ``(weight, context) -> scores``; the old form,
    ``(model, group) -> unit scores``, is told apart by trying it, and still works until 0.3."""
    fn = how.element
    index = param_index(model)
    members = _param_members(model, dict(model.named_parameters()), g)
    if not members:
        return how
    fqn = next((f for f, _ in members if index[f].param.dim() >= 2), members[0][0])
    target = index[fqn]
    weight = target.param.detach()
    crit = get_criterion(fn)
    try:
        check_scores(crit.score(weight, crit.context(target)), weight, fqn, crit.name)
        return how
    except Exception as element_error:
        try:
            _unit_scores(model, g, fn)
        except Exception:
            raise element_error from None
    warnings.warn(f"a criterion function (model, group) -> unit scores is deprecated and goes in prunekit "
                  f"{REMOVED_IN}: pass criterion=prunekit.structured.UnitCriterion(fn); a plain function is now an "
                  "element criterion (weight, context) -> scores, as in prunekit.prune", DeprecationWarning,
                  stacklevel=4)
    return UnitCriterion(fn)
