"""Side-by-side latency on this machine: variants interleaved in one process, medians, ratios.

The method (see shared/BENCHMARKING.md): build every variant first; run rounds, each timing every
variant (the order rotates) after a few untimed warm-up calls; report the median per-call latency,
p10/p90 as spread, and the ratio to the first variant. Outputs are checked against the first
variant's, because a faster wrong answer is a bug, not a result.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

__all__ = ["compare", "Comparison", "VariantTiming"]


@dataclass
class VariantTiming:
    """One variant: per-call latency in seconds over rounds (``median``, ``p10``, ``p90``), the
    speedup over the baseline (``speedup`` = baseline median / this median) and the output error
    versus the baseline (``max_abs_err``, ``rel_err`` = max abs error / max abs baseline output)."""

    name: str
    samples: list[float] = field(repr=False)
    speedup: float = 1.0
    max_abs_err: float = 0.0
    rel_err: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]

    @property
    def p10(self) -> float:
        return self.quantile(0.10)

    @property
    def p90(self) -> float:
        return self.quantile(0.90)


@dataclass
class Comparison:
    """Result of :func:`compare`: one :class:`VariantTiming` per variant, baseline first."""

    rows: list[VariantTiming]
    threads: int
    rounds: int

    def __getitem__(self, name: str) -> VariantTiming:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict:
        return {
            "threads": self.threads,
            "rounds": self.rounds,
            "variants": [
                {
                    "name": r.name,
                    "median_ms": r.median * 1e3,
                    "p10_ms": r.p10 * 1e3,
                    "p90_ms": r.p90 * 1e3,
                    "speedup": r.speedup,
                    "max_abs_err": r.max_abs_err,
                    "rel_err": r.rel_err,
                }
                for r in self.rows
            ],
        }

    def __str__(self) -> str:
        lines = [f"{'variant':<16} {'median ms':>10} {'p10-p90 ms':>16} {'speedup':>8} {'rel err':>9}"]
        for r in self.rows:
            spread = f"{r.p10 * 1e3:.3f}-{r.p90 * 1e3:.3f}"
            lines.append(f"{r.name:<16} {r.median * 1e3:>10.3f} {spread:>16} {r.speedup:>7.2f}x {r.rel_err:>9.1e}")
        return "\n".join(lines)


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"threads={n!r} must be a positive int, e.g. 2")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _call(fn: Callable, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return fn(**inputs)
    if isinstance(inputs, (tuple, list)):
        return fn(*inputs)
    return fn(inputs)


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    if isinstance(out, Mapping) and out:
        return _first_tensor(next(iter(out.values())))
    return getattr(out, "last_hidden_state", None)


def compare(
    variants: Mapping[str, Callable],
    example_inputs: Any,
    rounds: int = 30,
    warmup: int = 3,
    min_block_s: float = 0.01,
    threads: int | None = None,
) -> Comparison:
    """Time ``variants`` interleaved in this process and compare each with the first.

    Models are called under ``torch.inference_mode()``; put them in eval mode first.

    Args:
        variants: ``{"dense": model, "pruned": other_model, ...}``; the first is the baseline.
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        rounds: timed rounds per variant (the median is over these).
        warmup: untimed calls before each timed block.
        min_block_s: each timed block repeats the call until it lasts about this long.
        threads: ``torch.set_num_threads`` for the run (restored afterwards); None keeps the current.

    Returns:
        :class:`Comparison`; ``str()`` is a table.

    Example:
        >>> print(prunekit.bench.compare({"dense": dense, "pruned": pruned}, torch.randn(1, 3, 224, 224)))
    """
    if not variants:
        raise ValueError("variants is empty; pass {'name': model_or_callable, ...}")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds={rounds} must be >= 1 and warmup={warmup} >= 0")
    names = list(variants)
    with _threads(threads) as n_threads, torch.inference_mode():
        outputs = {n: _first_tensor(_call(variants[n], example_inputs)) for n in names}
        reps = {}
        for n in names:
            t0 = time.perf_counter()
            _call(variants[n], example_inputs)
            once = max(time.perf_counter() - t0, 1e-6)
            reps[n] = max(1, min(1000, int(min_block_s / once)))
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                fn = variants[n]
                for _ in range(warmup):
                    _call(fn, example_inputs)
                t0 = time.perf_counter()
                for _ in range(reps[n]):
                    _call(fn, example_inputs)
                samples[n].append((time.perf_counter() - t0) / reps[n])
    base = statistics.median(samples[names[0]])
    rows = []
    ref = outputs[names[0]]
    for n in names:
        row = VariantTiming(n, samples[n])
        row.speedup = base / row.median
        out = outputs[n]
        if ref is not None and out is not None and out.shape == ref.shape:
            diff = (out.float() - ref.float()).abs().max().item()
            row.max_abs_err = diff
            row.rel_err = diff / max(ref.float().abs().max().item(), 1e-12)
        elif n != names[0]:
            row.max_abs_err = row.rel_err = float("nan")  # outputs not comparable
        rows.append(row)
    return Comparison(rows, n_threads, rounds)
