"""Side-by-side latency on this machine: variants interleaved in one process, medians, ratios.

The method (see shared/BENCHMARKING.md): build every variant first; run repeated blocks, each timing every
variant (the order rotates) after a few untimed warm-up calls; report the median per-call latency,
p10/p90 as spread, and the ratio to the first variant. Outputs are checked against the first
variant's, because a faster wrong answer is a bug, not a result.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from prunekit._compat import old_kwargs
from prunekit._io import write_text
from prunekit.inputs import call, first_tensor
from prunekit.inputs import threads as threads_in_use

__all__ = ["benchmark", "BenchmarkResult", "compare", "Comparison", "VariantTiming", "as_callable"]

PERCENTILES = (25, 50, 75, 90, 95, 99, 99.9)


@dataclass
class VariantTiming:
    """One variant: per-call latency in seconds over repeated blocks (``median``, ``p10``, ``p90``), the
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
    repeats: int

    @property
    def rounds(self) -> int:
        """Deprecated name of :attr:`repeats` (goes in prunekit 0.3)."""
        warnings.warn("Comparison.rounds is deprecated and goes in prunekit 0.3; use .repeats", DeprecationWarning, stacklevel=2)
        return self.repeats

    def __getitem__(self, name: str) -> VariantTiming:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict:
        return {
            "threads": self.threads,
            "repeats": self.repeats,
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


class _OnnxRunner:
    """Runs an ONNX file with ONNX Runtime on torch inputs (positional in graph order, or a dict)."""

    def __init__(self, path: str, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("benchmarking an ONNX file needs onnxruntime: pip install 'prunekit[onnx]'") from None
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} is not an ONNX model ONNX Runtime can load: {str(e).splitlines()[0][:200]}") from None
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *args, **kwargs):
        feeds = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        for name, value in zip(self.names, args):
            feeds[name] = value.numpy() if isinstance(value, torch.Tensor) else value
        return torch.from_numpy(self.session.run(None, feeds)[0])


def as_callable(target: Any, threads: int | None = None) -> Callable:
    """An ``nn.Module``, any callable, or a path to an ``.onnx`` file, as a callable."""
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        if not path.endswith(".onnx") or not os.path.exists(path):
            raise ValueError(f"{path!r} is not an existing .onnx file; pass a model, a callable or an ONNX path")
        return _OnnxRunner(path, threads)
    if not callable(target):
        raise TypeError(f"expected an nn.Module, a callable or an .onnx path, got {type(target).__name__}")
    return target


def compare(
    variants: Mapping[str, Callable],
    example_inputs: Any,
    repeats: int = 30,
    warmup: int = 3,
    min_block_s: float = 0.01,
    threads: int | None = None,
    **deprecated,
) -> Comparison:
    """Time ``variants`` interleaved in this process and compare each with the first.

    Models are called under ``torch.inference_mode()``; put them in eval mode first.

    Args:
        variants: ``{"dense": model, "pruned": other_model, "onnx": "model.onnx", ...}``: modules,
            callables or ONNX files (run with ONNX Runtime); the first is the baseline.
        example_inputs: one input (see :mod:`prunekit.inputs`): a tensor, a tuple of positional
            inputs, or a dict of keyword inputs.
        repeats: timed blocks per variant (the median is over these; ``rounds=`` is its deprecated name).
        warmup: untimed calls before each timed block.
        min_block_s: each timed block repeats the call until it lasts about this long.
        threads: ``torch.set_num_threads`` for the run (restored afterwards); None keeps the current.

    Returns:
        :class:`Comparison`; ``str()`` is a table.

    Example:
        >>> print(prunekit.bench.compare({"dense": dense, "pruned": pruned}, torch.randn(1, 3, 224, 224)))
    """
    if not isinstance(variants, Mapping):
        raise TypeError(f"variants must be a dict {{name: model}}, got {type(variants).__name__}")
    if not variants:
        raise ValueError("variants is empty; pass {'name': model_or_callable, ...}")
    repeats = old_kwargs("compare", deprecated, {"rounds": "repeats"}).get("repeats", repeats)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an int >= 1, e.g. 30")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be an int >= 0, e.g. 3")
    if not isinstance(min_block_s, (int, float)) or not 0 <= min_block_s < 60:
        raise ValueError(f"min_block_s={min_block_s!r} must be seconds in [0, 60), e.g. 0.01")
    variants = {n: as_callable(v, threads) for n, v in variants.items()}
    names = list(variants)
    with threads_in_use(threads) as n_threads, torch.inference_mode():
        outputs = {}
        for n in names:
            try:
                outputs[n] = first_tensor(call(variants[n], example_inputs))
            except Exception as e:
                raise ValueError(f"variant {n!r} does not run on example_inputs: {type(e).__name__}: {e}") from e
        ref = outputs[names[0]]
        for n in names[1:]:
            out = outputs[n]
            if ref is not None and (out is None or out.shape != ref.shape):
                got = "no tensor" if out is None else f"shape {tuple(out.shape)}"
                raise ValueError(
                    f"variant {n!r} returns {got} where the baseline {names[0]!r} returns shape {tuple(ref.shape)}; "
                    "compare() times variants of the same computation (a speedup of a different output means nothing)"
                )
        reps = {}
        for n in names:
            t0 = time.perf_counter()
            call(variants[n], example_inputs)
            once = max(time.perf_counter() - t0, 1e-6)
            reps[n] = max(1, min(1000, int(min_block_s / once)))
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                fn = variants[n]
                for _ in range(warmup):
                    call(fn, example_inputs)
                t0 = time.perf_counter()
                for _ in range(reps[n]):
                    call(fn, example_inputs)
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
    return Comparison(rows, n_threads, repeats)


def _batched(inputs: Any, batch: int) -> Any:
    """Repeat batch-1 example inputs along dim 0 to make a batch of ``batch``."""
    if batch == 1:
        return inputs
    if isinstance(inputs, torch.Tensor):
        return torch.cat([inputs] * batch)
    if isinstance(inputs, dict):
        return {k: _batched(v, batch) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_batched(v, batch) for v in inputs)
    return inputs


@dataclass
class BenchmarkResult:
    """Per batch size: items/s and latency statistics in milliseconds (mean, median, std and the
    percentiles 25/50/75/90/95/99/99.9, DeepSparse's set). ``str()`` is a table; ``to_json()``."""

    rows: list[dict]
    threads: int

    def to_dict(self) -> dict:
        return {"threads": self.threads, "batches": self.rows}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text(path, text, "path")
        return text

    def __str__(self) -> str:
        head = f"{'batch':>5} {'items/s':>10} {'mean ms':>9} {'median':>8} {'std':>7} {'p90':>8} {'p99':>8} {'p99.9':>8} {'iters':>6}"
        lines = [head]
        for r in self.rows:
            lines.append(
                f"{r['batch']:>5} {r['items_per_s']:>10.1f} {r['mean_ms']:>9.3f} {r['median_ms']:>8.3f} {r['std_ms']:>7.3f} "
                f"{r['p90_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['p99.9_ms']:>8.3f} {r['iterations']:>6}"
            )
        return "\n".join(lines)


def benchmark(
    model: Any,
    example_inputs: Any,
    batch_sizes: tuple[int, ...] = (1,),
    threads: int | None = None,
    warmup_iters: int = 5,
    warmup_s: float = 0.2,
    min_iters: int = 20,
    min_time_s: float = 1.0,
    max_iters: int = 100_000,
) -> BenchmarkResult:
    """Latency and throughput of one model on this machine.

    For each batch size (the batch-1 ``example_inputs`` repeated along dim 0): warm up for at least
    ``warmup_iters`` calls and ``warmup_s`` seconds, then time single calls until both ``min_iters`` and
    ``min_time_s`` are reached. Statistics are computed with numpy.

    Args:
        model: an ``nn.Module`` (called under ``inference_mode``; put it in eval mode), any callable,
            or a path to an ``.onnx`` file (run with ONNX Runtime on the CPU).
        example_inputs: batch-1 inputs: a tensor, a tuple of tensors, or a dict of tensors.
        batch_sizes: batch sizes to measure.
        threads: intra-op threads (``torch.set_num_threads`` / ONNX Runtime), restored afterwards.

    Returns:
        :class:`BenchmarkResult`.

    Example:
        >>> print(prunekit.benchmark(model.eval(), torch.randn(1, 3, 224, 224), batch_sizes=(1, 8), threads=2))
    """
    import numpy as np

    if not isinstance(batch_sizes, (tuple, list)) or not batch_sizes or \
            any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes={batch_sizes!r} must be positive ints, e.g. (1, 8)")
    if min_iters < 1 or min_time_s < 0 or warmup_iters < 0:
        raise ValueError("min_iters must be >= 1; min_time_s and warmup_iters >= 0")
    fn = as_callable(model, threads)
    rows = []
    with threads_in_use(threads) as n_threads, torch.inference_mode():
        for batch in batch_sizes:
            inputs = _batched(example_inputs, batch)
            try:
                call(fn, inputs)
            except Exception as e:
                raise ValueError(f"the model does not run on example_inputs at batch {batch}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e
            t_end = time.perf_counter() + warmup_s
            done = 0
            while done < warmup_iters or time.perf_counter() < t_end:
                call(fn, inputs)
                done += 1
            times = []
            start = time.perf_counter()
            while (len(times) < min_iters or time.perf_counter() - start < min_time_s) and len(times) < max_iters:
                t0 = time.perf_counter()
                call(fn, inputs)
                times.append(time.perf_counter() - t0)
            ms = np.array(times) * 1e3
            row = {"batch": batch, "iterations": len(times), "items_per_s": batch / (ms.mean() / 1e3),
                   "mean_ms": float(ms.mean()), "median_ms": float(np.median(ms)), "std_ms": float(ms.std())}
            for p, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES)):
                row[f"p{p:g}_ms"] = float(v)
            rows.append(row)
    return BenchmarkResult(rows, n_threads)
