"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin 2019).

Train, prune ``rate`` of the remaining weights by magnitude, rewind the survivors to their values at
initialization (``rewind_step=0``) or at an early step k (late rewinding, Frankle et al. 2020), and
train again; repeat. The control retrains each round's mask from a fresh random initialization.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from prunekit._checks import fraction, integer
from prunekit._compat import old_kwargs
from prunekit._progress import progress as progress_bar
from prunekit.masks import masks
from prunekit.pruning import prune
from prunekit.recipes.history import History
from prunekit.targets import Selector, find_targets, param_index

__all__ = ["lottery_ticket", "LotteryResult"]


@dataclass
class LotteryResult:
    """``history`` (round, remaining fraction, metric, control_metric), ``masks`` per round (round 1
    first), and ``rewind_state``: the weights the ticket was rewound to."""

    history: History
    masks: list[dict] = field(default_factory=list)
    rewind_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter (stored original, unpruned naming) and buffer (masks excluded) by name."""
    out = {fqn: t.param for fqn, t in param_index(model).items() if fqn == t.fqn}
    for name, b in model.named_buffers():
        if ".parametrizations." not in f".{name}":
            out[name] = b
    return out


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in _tensors(model).items()}


def _restore(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    tensors = _tensors(model)
    with torch.no_grad():
        for name, value in values.items():
            tensors[name].copy_(value)


def _reinitialized(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fresh initial values for an unpruned ``model`` (``reset_parameters`` on a copy; model untouched).

    If ``seed`` happens to be the seed the model was built with, the draw would reproduce its
    initialization; the next seed is used then, so the control is never the ticket itself.
    """
    current = _snapshot(model)
    for s in range(seed, seed + 100):
        clone = copy.deepcopy(model)
        with torch.random.fork_rng():
            torch.manual_seed(s)
            for m in clone.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        fresh = _snapshot(clone)
        if not any(torch.equal(fresh[k], v) for k, v in current.items() if v.is_floating_point() and v.numel() > 1):
            return fresh
    raise RuntimeError("could not draw a re-initialization different from the model's own")


def _per_round(sparsity, rate, rounds: int, name: str, old_name: str, default):
    """The fraction of what is left pruned each round, from a final ``sparsity`` or an old per-round ``rate``."""
    if sparsity is not None and rate is not None:
        raise TypeError(f"lottery_ticket() got both {name}= and the deprecated {old_name}=; pass only {name}=")
    if rate is not None:
        rate = fraction(rate, old_name)
    elif sparsity is not None:
        rate = 1 - (1 - fraction(sparsity, name)) ** (1 / rounds)
    else:
        return default
    if rate == 0:
        raise ValueError(f"{name}=0 prunes nothing; use e.g. {name}=0.9")
    return rate


def lottery_ticket(
    model: nn.Module,
    train_fn: Callable[..., None],
    eval_fn: Callable[[nn.Module], float],
    sparsity: float | None = None,
    rounds: int = 5,
    rewind_step: int = 0,
    scope: str = "global",
    output_sparsity: float | None = None,
    output_layer: str | None = None,
    include: Selector = None,
    exclude: Selector = None,
    control: bool = False,
    seed: int = 0,
    progress: bool = True,
    **deprecated,
) -> LotteryResult:
    """Find a winning ticket by iterative magnitude pruning with rewinding.

    Args:
        model: an unpruned model at its initialization; trained, pruned and rewound in place.
        train_fn: ``train_fn(model)`` trains in place; with ``rewind_step > 0`` it must also accept
            ``max_steps=k`` (see :func:`prunekit.recipes.sgd_cosine`).
        eval_fn: ``eval_fn(model) -> float``.
        sparsity: the fraction pruned after the last round; each round removes the same fraction of
            what is left, ``1 - (1 - sparsity) ** (1 / rounds)``. None: 20% of what is left per round
            (the paper's rate), ending at ``1 - 0.8 ** rounds``. (``rate=``, the per-round fraction, is
            deprecated.)
        rounds: pruning rounds.
        rewind_step: 0 rewinds to initialization; k > 0 trains k steps first and rewinds there.
        scope: ``"global"`` or ``"layer"`` ranking.
        output_sparsity: a separate final sparsity for ``output_layer`` (the paper prunes it at half
            the per-round rate). (``output_rate=``, per round, is deprecated.)
        output_layer: module name (glob) of the output layer; default: the last targeted layer.
        include, exclude: which weights (as for ``prunekit.prune``).
        control: also retrain each round's mask from a fresh random initialization (the control):
            ``reset_parameters()`` of every module, drawn with ``seed``.
        seed: seed of the control's re-initialization (never reproducing the model's own).

    Returns:
        :class:`LotteryResult`. Round 0 of the history is the dense trained model.

    Example:
        >>> res = prunekit.recipes.lottery_ticket(model, sgd_cosine(loader, epochs=5), evaluate, rounds=8, control=True)
        >>> print(res.history)
    """
    old = dict(deprecated)  # per-round rates: converted below, once rounds is known
    old_kwargs("lottery_ticket", deprecated, {"rate": "sparsity", "output_rate": "output_sparsity"})
    rounds = integer(rounds, "rounds", 1)
    rate = _per_round(sparsity, old.get("rate"), rounds, "sparsity", "rate", 0.2)
    output_rate = _per_round(output_sparsity, old.get("output_rate"), rounds, "output_sparsity", "output_rate", None)
    rewind_step = integer(rewind_step, "rewind_step", 0)
    if rewind_step and "max_steps" not in inspect.signature(train_fn).parameters:
        raise TypeError("rewind_step > 0 needs train_fn(model, max_steps=k); see prunekit.recipes.sgd_cosine")
    if masks(model):
        raise ValueError("lottery_ticket starts from an unpruned model at initialization; this one has masks")
    targets = find_targets(model, include, exclude)
    if output_layer is None:
        output_layer = targets[-1].module_fqn
    elif not any(t.module_fqn == output_layer or t.fqn == output_layer for t in targets):
        raise ValueError(f"output_layer={output_layer!r} is not a targeted layer; targets are {[t.module_fqn for t in targets]}")

    control_init = _reinitialized(model, seed) if control else None
    if rewind_step:
        train_fn(model, max_steps=rewind_step)
    rewind = _snapshot(model)

    history = History()
    result = LotteryResult(history, rewind_state=rewind)
    t0 = time.perf_counter()
    train_fn(model)
    history.append(round=0, remaining=1.0, metric=float(eval_fn(model)), control_metric=None, seconds=time.perf_counter() - t0)
    bar = progress_bar(range(1, rounds + 1), desc="lottery ticket", unit="round", enabled=progress)
    for r in bar:
        t0 = time.perf_counter()
        s = 1 - (1 - rate) ** r
        sparsity = {"*": s}
        if output_rate is not None:
            sparsity[output_layer] = 1 - (1 - output_rate) ** r
        report = prune(model, sparsity, scope=scope, include=include, exclude=exclude)
        current = masks(model)
        result.masks.append(current)
        _restore(model, rewind)
        train_fn(model)
        metric = float(eval_fn(model))
        control_metric = None
        if control_init is not None:
            other = copy.deepcopy(model)
            _restore(other, control_init)  # same masks, fresh random weights
            train_fn(other)
            control_metric = float(eval_fn(other))
        history.append(round=r, remaining=1 - report.sparsity, metric=metric, control_metric=control_metric,
                       seconds=time.perf_counter() - t0)
        bar.set_postfix(remaining=f"{1 - report.sparsity:.3f}", metric=f"{metric:.4f}")
    return result
