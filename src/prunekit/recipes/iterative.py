"""Iterative pruning: prune a little, fine-tune, evaluate, repeat (geometric schedule)."""

from __future__ import annotations

import time
from typing import Callable

from torch import nn

from prunekit._compat import old_kwargs
from prunekit._progress import progress as progress_bar
from prunekit.criteria import CriterionLike
from prunekit.patterns import Pattern
from prunekit.pruning import prune
from prunekit.recipes.history import History
from prunekit.schedules import Geometric
from prunekit.targets import Selector

__all__ = ["iterative_pruning"]


def iterative_pruning(
    model: nn.Module,
    train_fn: Callable[[nn.Module], None],
    eval_fn: Callable[[nn.Module], float],
    sparsity: float = 0.9,
    rounds: int = 10,
    criterion: CriterionLike = "magnitude",
    pattern: str | Pattern = "unstructured",
    scope: str = "global",
    include: Selector = None,
    exclude: Selector = None,
    progress: bool = True,
    **deprecated,
) -> History:
    """Reach ``sparsity`` in ``rounds`` prune/fine-tune rounds (``target=`` is its deprecated name).

    Round ``k`` prunes to ``1 - (1 - sparsity) ** (k / rounds)`` (each round removes the same fraction
    of what is left), then calls ``train_fn(model)`` (masks hold, zeros stay zero) and
    ``eval_fn(model)``. Use :func:`prunekit.recipes.sgd_cosine` for the classic SGD + cosine fine-tune.

    Changes: the model is pruned (masked) and fine-tuned in place; call ``prunekit.finalize`` after.

    Returns:
        :class:`History`: round 0 is the model as given, then one row per round with ``sparsity``,
        ``metric`` (what ``eval_fn`` returned) and ``seconds``.

    Example:
        >>> hist = prunekit.recipes.iterative_pruning(model, sgd_cosine(loader), evaluate, sparsity=0.9, rounds=5)
        >>> print(hist)
    """
    sparsity = old_kwargs("iterative_pruning", deprecated, {"target": "sparsity"}).get("sparsity", sparsity)
    schedule = Geometric(sparsity, rounds)  # validates sparsity and rounds
    if not callable(train_fn) or not callable(eval_fn):
        raise TypeError("train_fn(model) and eval_fn(model) -> float must be callables")
    history = History()
    history.append(round=0, sparsity=0.0, metric=float(eval_fn(model)), seconds=0.0)
    bar = progress_bar(range(rounds), desc="iterative pruning", unit="round", enabled=progress)
    for r in bar:
        t0 = time.perf_counter()
        s = schedule.sparsity_at(r)
        report = prune(model, s, criterion=criterion, pattern=pattern, scope=scope, include=include, exclude=exclude)
        train_fn(model)
        metric = float(eval_fn(model))
        history.append(round=r + 1, sparsity=report.sparsity, metric=metric, seconds=time.perf_counter() - t0)
        bar.set_postfix(sparsity=f"{report.sparsity:.3f}", metric=f"{metric:.4f}")
    return history
