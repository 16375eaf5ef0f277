"""Sparsity over training steps.

A schedule answers two questions for an integer step (the first ``Pruner.step()`` call is step 0,
as TF-MOT counts): :meth:`Schedule.sparsity_at` — the target sparsity then — and
:meth:`Schedule.should_update` — whether masks are recomputed at that step. Between updates the
masks hold and pruned weights stay zero.

``Constant`` and ``PolynomialDecay`` follow TF-MOT's ``ConstantSparsity`` / ``PolynomialDecay``
exactly; ``PolynomialDecay`` with ``power=3`` is Zhu & Gupta's gradual schedule. ``Geometric`` removes
the same fraction of the *remaining* weights each round (iterative magnitude pruning).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prunekit._checks import fraction, integer

__all__ = ["Schedule", "OneShot", "Constant", "PolynomialDecay", "Geometric", "SCHEDULES"]


def _step(step) -> int:
    return integer(step, "step", 0)


class Schedule:
    """Base class: subclass and implement :meth:`sparsity_at` and :meth:`should_update`."""

    def sparsity_at(self, step: int) -> float:
        raise NotImplementedError

    def should_update(self, step: int) -> bool:
        raise NotImplementedError

    def config(self) -> dict:
        """The constructor arguments plus ``type`` (used by recipes and ``Pruner.state_dict``)."""
        return {"type": type(self).__name__, **asdict(self)}


@dataclass
class OneShot(Schedule):
    """Prune to ``sparsity`` once, at ``at_step``; hold the masks afterwards."""

    sparsity: float
    at_step: int = 0

    def __post_init__(self):
        self.sparsity = fraction(self.sparsity, "sparsity")
        self.at_step = integer(self.at_step, "at_step", 0)

    def sparsity_at(self, step):
        return self.sparsity if _step(step) >= self.at_step else 0.0

    def should_update(self, step):
        return _step(step) == self.at_step


@dataclass
class Constant(Schedule):
    """TF-MOT ``ConstantSparsity``: ``sparsity`` at every update step.

    Updates when ``begin_step <= step`` and (``end_step == -1`` or ``step <= end_step``) and
    ``(step - begin_step) % frequency == 0``.
    """

    sparsity: float
    begin_step: int = 0
    end_step: int = -1
    frequency: int = 100

    def __post_init__(self):
        self.sparsity = fraction(self.sparsity, "sparsity")
        self.begin_step = integer(self.begin_step, "begin_step", 0)
        self.end_step = integer(self.end_step, "end_step", -1)
        self.frequency = integer(self.frequency, "frequency", 1)
        if self.end_step != -1 and self.end_step < self.begin_step:
            raise ValueError(
                f"end_step={self.end_step} is before begin_step={self.begin_step}; use end_step=-1 to prune forever"
            )

    def sparsity_at(self, step):
        return self.sparsity if _step(step) >= self.begin_step else 0.0

    def should_update(self, step):
        step = _step(step)
        in_range = self.begin_step <= step and (self.end_step == -1 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0


@dataclass
class PolynomialDecay(Schedule):
    """TF-MOT ``PolynomialDecay``: from ``initial_sparsity`` at ``begin_step`` to ``final_sparsity`` at
    ``end_step``.

    ``p = clip((step - begin) / (end - begin), 0, 1)``;
    ``s = final + (initial - final) * (1 - p) ** power``. Updates when ``begin <= step <= end`` and
    ``(step - begin) % frequency == 0``. With ``power=3`` this is Zhu & Gupta (2017).
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3
    frequency: int = 100

    def __post_init__(self):
        self.initial_sparsity = fraction(self.initial_sparsity, "initial_sparsity")
        self.final_sparsity = fraction(self.final_sparsity, "final_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"initial_sparsity={self.initial_sparsity} is above final_sparsity={self.final_sparsity}; "
                "pruning only adds zeros, so the schedule must not decrease"
            )
        self.begin_step = integer(self.begin_step, "begin_step", 0)
        self.end_step = integer(self.end_step, "end_step", 0)
        if self.begin_step >= self.end_step:
            raise ValueError(f"begin_step={self.begin_step} must be before end_step={self.end_step}")
        if isinstance(self.power, bool) or not isinstance(self.power, (int, float)) or not self.power > 0:
            raise ValueError(f"power={self.power!r} must be a positive number, e.g. 3")
        self.frequency = integer(self.frequency, "frequency", 1)

    def sparsity_at(self, step):
        step = _step(step)
        p = min(1.0, max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step)))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - p) ** self.power

    def should_update(self, step):
        step = _step(step)
        return self.begin_step <= step <= self.end_step and (step - self.begin_step) % self.frequency == 0


@dataclass
class Geometric(Schedule):
    """Each round removes ``1 - (1 - s) ** (1 / rounds)`` of the weights still left.

    After round ``k`` (1-based) the sparsity is ``1 - (1 - s) ** (k / rounds)``. Round ``k`` starts at
    step ``(k - 1) * steps_per_round``; with the default a step is a round.
    """

    final_sparsity: float
    rounds: int
    steps_per_round: int = 1

    def __post_init__(self):
        self.final_sparsity = fraction(self.final_sparsity, "final_sparsity")
        self.rounds = integer(self.rounds, "rounds", 1)
        self.steps_per_round = integer(self.steps_per_round, "steps_per_round", 1)

    def round_at(self, step: int) -> int:
        """The 1-based round that ``step`` belongs to, capped at ``rounds``."""
        return min(self.rounds, _step(step) // self.steps_per_round + 1)

    def sparsity_at(self, step):
        return 1.0 - (1.0 - self.final_sparsity) ** (self.round_at(step) / self.rounds)

    def should_update(self, step):
        step = _step(step)
        return step % self.steps_per_round == 0 and step // self.steps_per_round < self.rounds


SCHEDULES = {cls.__name__: cls for cls in (OneShot, Constant, PolynomialDecay, Geometric)}
