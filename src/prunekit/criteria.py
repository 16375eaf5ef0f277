"""Importance scores: higher means keep.

A criterion only scores. It gets one weight (the effective, already-masked values, so pruned
entries read as zero) and a :class:`ScoreContext`, and returns a tensor of the same shape. Patterns
(``prunekit.patterns``) turn scores into masks; nothing here decides how many to prune.

Built in: ``"magnitude"`` (|w|, L1), ``"l2"`` (w², the squared L2 norm, so a block or channel is ranked
by its L2 norm), ``"random"`` (seeded), ``"taylor"`` (|w · dL/dw|, first-order Taylor estimate of the
loss change, from calibration ``data`` + ``loss_fn`` or from gradients already in ``.grad``),
``"wanda"`` (|w| times the L2 norm of its input feature over calibration ``data``). Any
callable ``(weight, context) -> scores`` works, and so does a :class:`Criterion` subclass that needs
to look at the model first (override :meth:`Criterion.prepare`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Union

import torch
from torch import nn

from prunekit._stats import InputStats
from prunekit.inputs import forward, modes
from prunekit.inputs import loss as batch_loss

__all__ = [
    "Criterion",
    "ScoreContext",
    "Magnitude",
    "L2",
    "Random",
    "Taylor",
    "Wanda",
    "FunctionCriterion",
    "get_criterion",
    "CRITERIA",
]


@dataclass
class ScoreContext:
    """What a criterion may look at besides the weight.

    Attributes:
        fqn: the parameter's name in the unpruned model (``"fc1.weight"``).
        module: the module that owns it.
        name: the parameter's name in the module (``"weight"``).
        grad: accumulated gradient of the loss w.r.t. this weight, when one is known.
        extra: room for statistics gathered by :meth:`Criterion.prepare` (activation norms, ...).
    """

    fqn: str
    module: nn.Module
    name: str
    grad: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


class Criterion:
    """Base class: subclass and implement :meth:`score`; override :meth:`prepare` for data.

    Example:
        >>> class AbsCubed(Criterion):
        ...     name = "abs3"
        ...     def score(self, weight, context):
        ...         return weight.abs() ** 3
    """

    name = "custom"

    def prepare(self, model: nn.Module, targets: list, data: Iterable | None, loss_fn: Callable | None) -> None:
        """Gather what scoring needs (called once per ``prune``, before any scoring).

        Must leave the model's parameters, buffers and ``.grad`` as they were.
        """

    def context(self, target) -> ScoreContext:
        """The context handed to :meth:`score` for one target."""
        return ScoreContext(target.fqn, target.module, target.name)

    def score(self, weight: torch.Tensor, context: ScoreContext) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Magnitude(Criterion):
    """|w| (L1). Summed over a block or channel this is the block's L1 norm."""

    name = "magnitude"

    def score(self, weight, context):
        return weight.abs()


class L2(Criterion):
    """w²: ranks elements like |w|, and blocks or channels by their L2 norm."""

    name = "l2"

    def score(self, weight, context):
        return weight.square()


class Random(Criterion):
    """Uniform random scores, reproducible: the same seed gives the same masks.

    Args:
        seed: seeds one generator that scores targets in model order.
    """

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._gen: torch.Generator | None = None

    def prepare(self, model, targets, data, loss_fn):
        self._gen = torch.Generator().manual_seed(self.seed)

    def score(self, weight, context):
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(weight.shape, generator=self._gen).to(weight.device)

    def __repr__(self):
        return f"Random(seed={self.seed})"


class Taylor(Criterion):
    """|w · dL/dw|: the first-order estimate of how much the loss changes when w is removed.

    Gradients come from ``data`` + ``loss_fn`` passed to ``prune`` (accumulated over all batches,
    computed with ``torch.autograd.grad`` so ``.grad`` is untouched, in eval mode so BatchNorm
    statistics and dropout are untouched), or, without data, from the ``.grad`` already on each
    weight (e.g. right after ``loss.backward()``).
    """

    name = "taylor"

    def __init__(self):
        self._grads: dict[int, torch.Tensor] = {}

    def prepare(self, model, targets, data, loss_fn):
        self._grads = {}
        if data is None:
            missing = [t.fqn for t in targets if t.param.grad is None]
            if missing:
                raise ValueError(
                    f"criterion='taylor' needs gradients: pass data=<calibration batches> (and loss_fn), "
                    f"or call loss.backward() first. No .grad on {missing[:5]}"
                )
            self._grads = {id(t.param): t.param.grad.detach().clone() for t in targets}
            return
        params = [t.param for t in targets]
        sums = [torch.zeros_like(p) for p in params]
        n = 0
        with modes(model), torch.enable_grad():
            for i, batch in enumerate(data):
                loss = _batch(batch_loss, model, batch, loss_fn, i=i)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for s, g in zip(sums, grads):
                    if g is not None:
                        s.add_(g.detach())
                n += 1
        if n == 0:
            raise ValueError("data is empty: criterion='taylor' needs at least one calibration batch")
        self._grads = {id(p): s for p, s in zip(params, sums)}

    def context(self, target):
        ctx = super().context(target)
        ctx.grad = self._grads.get(id(target.param))
        return ctx

    def score(self, weight, context):
        if context.grad is None:
            raise ValueError(f"criterion='taylor' has no gradient for '{context.fqn}'")
        return (weight * context.grad).abs()


def _batch(fn, *args, i: int):
    """``fn(*args)`` for calibration batch ``i``; a batch that does not run the model is named."""
    try:
        return fn(*args)
    except (TypeError, ValueError):
        raise
    except Exception as e:
        raise ValueError(f"data batch {i} does not run the model: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e


class Wanda(Criterion):
    """|w| * ||x||_2: weight magnitude times the L2 norm of its input feature over ``data``
    (Sun et al. 2023). Linear layers only; ``prune`` ranks these scores by its ``scope`` (the
    per-output-row comparison of the paper is ``prunekit.recipes.oneshot(method="wanda")``).
    """

    name = "wanda"

    def __init__(self):
        self._norms: dict[int, torch.Tensor] = {}

    def prepare(self, model, targets, data, loss_fn):
        if data is None:
            raise ValueError("criterion='wanda' needs data=<calibration batches> to measure input norms")
        bad = [t.fqn for t in targets if not isinstance(t.module, nn.Linear) or t.name != "weight"]
        if bad:
            raise ValueError(f"criterion='wanda' scores Linear weights only; exclude {bad[:5]}")
        stats = {id(t.module): InputStats(t.module) for t in targets}
        n = 0
        try:
            with modes(model), torch.no_grad():
                for i, batch in enumerate(data):
                    _batch(forward, model, batch, i=i)
                    n += 1
        finally:
            for st in stats.values():
                st.remove()
        if n == 0:
            raise ValueError("data is empty: criterion='wanda' needs at least one calibration batch")
        self._norms = {id(t.param): stats[id(t.module)].norms() for t in targets}

    def context(self, target):
        ctx = super().context(target)
        ctx.extra["input_norm"] = self._norms.get(id(target.param))
        return ctx

    def score(self, weight, context):
        norm = context.extra.get("input_norm")
        if norm is None:
            raise ValueError(f"criterion='wanda' has no input statistics for '{context.fqn}'")
        return weight.abs() * norm.to(weight.device, weight.dtype)[None, :]


class FunctionCriterion(Criterion):
    """Wraps a plain function ``(weight, context) -> scores``."""

    def __init__(self, fn: Callable[[torch.Tensor, ScoreContext], torch.Tensor]):
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def score(self, weight, context):
        return self.fn(weight, context)

    def __repr__(self):
        return f"FunctionCriterion({self.name})"


CRITERIA: dict[str, Callable[[], Criterion]] = {
    "magnitude": Magnitude,
    "l1": Magnitude,
    "l2": L2,
    "random": Random,
    "taylor": Taylor,
    "wanda": Wanda,
}

CriterionLike = Union[str, Criterion, Callable[[torch.Tensor, ScoreContext], torch.Tensor]]


def get_criterion(criterion: CriterionLike) -> Criterion:
    """Resolve a name, a :class:`Criterion` or a function into a :class:`Criterion`.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, type) and issubclass(criterion, Criterion):
        return criterion()
    if isinstance(criterion, str):
        key = criterion.lower()
        if key not in CRITERIA:
            raise ValueError(
                f"criterion={criterion!r} is unknown; use one of {sorted(CRITERIA)}, "
                "a function (weight, context) -> scores, or a prunekit.Criterion"
            )
        return CRITERIA[key]()
    if callable(criterion):
        return FunctionCriterion(criterion)
    raise TypeError(
        f"criterion must be a name {sorted(CRITERIA)}, a function (weight, context) -> scores or a "
        f"prunekit.Criterion, got {type(criterion).__name__}"
    )


def check_scores(scores: Any, weight: torch.Tensor, fqn: str, name: str) -> torch.Tensor:
    """Validate what a criterion returned and bring it to float32 on the weight's device."""
    if not isinstance(scores, torch.Tensor) or scores.shape != weight.shape:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"criterion {name!r} returned {shape} for '{fqn}'; it must return a tensor of the weight's "
            f"shape {tuple(weight.shape)}"
        )
    scores = scores.detach().to(device=weight.device, dtype=torch.float32)
    if torch.isnan(scores).any():
        raise ValueError(f"criterion {name!r} returned NaN scores for '{fqn}'")
    return scores
