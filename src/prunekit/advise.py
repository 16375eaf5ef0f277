"""The practitioner's decision matrix, measured on this machine.

The usual advice (mobile: structured 30-50%; A100: 2:4; microcontroller: unstructured + int8;
quick: one-shot magnitude) is a prior, not a measurement. :func:`advise` builds those candidates
for the user's model, times each against the dense model in one process (interleaved, medians),
writes each to disk to get its size, and scores its quality with the user's ``eval_fn`` (or, without
one, the cosine similarity of its outputs to the dense model's on the example inputs). It reports a
Pareto table and the matrix filled in with what it measured, within a time budget.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from prunekit._compat import old_kwargs
from prunekit._io import write_text
from prunekit._progress import progress as progress_bar
from prunekit.advise_candidates import Candidate, default_candidates
from prunekit.advise_recovery import parse_duration, recover_candidates
from prunekit.inputs import call, first_tensor

__all__ = ["advise", "Advice", "Candidate", "default_candidates"]


@dataclass
class Advice:
    """What :func:`advise` measured. ``rows``: one dict per candidate (name, method, sparsity,
    latency_ms, items_per_s, speedup, size_bytes, size_ratio, quality, pareto, seconds, error; with
    ``recover``: ``recovered_quality`` on a one-shot row, ``recovered_from`` on its recovered row); ``matrix``: the
    decision matrix filled with measurements; ``skipped``: candidates the budget left out."""

    rows: list[dict]
    dense: dict
    quality_kind: str
    threads: int
    budget_s: float
    elapsed_s: float
    matrix: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text(path, text, "path")
        return text

    def __str__(self) -> str:
        q = "eval_fn" if self.quality_kind == "eval_fn" else "output cosine to dense"
        lines = [f"measured on this machine, {self.threads} threads, batch of the example inputs; quality = {q}",
                 "each speedup = dense ms / ms, both timed in the same interleaved run",
                 f"{'candidate':<38} {'ms':>8} {'dense ms':>9} {'speedup':>8} {'file':>7} {'quality':>8} "
                 f"{'recovered':>9}  pareto",
                 f"{'dense (median of the runs)':<38} {self.dense['latency_ms']:>8.2f} {'':>9} {1:>7.2f}x {1:>6.2f}x "
                 f"{self.dense['quality']:>8.3f}"]
        for r in self.rows:
            if r.get("error"):
                lines.append(f"{r['name']:<38} failed: {r['error'][:70]}")
                continue
            lines.append(f"{r['name']:<38} {r['latency_ms']:>8.2f} {r.get('dense_ms', float('nan')):>9.2f} "
                         f"{r['speedup']:>7.2f}x {r['size_ratio']:>6.2f}x {r['quality']:>8.3f} "
                         f"{'' if r.get('recovered_quality') is None else format(r['recovered_quality'], '.3f'):>9}  "
                         f"{'*' if r['pareto'] else ''}")
        for r in self.rows:
            if r.get("note"):
                lines.append(f"note, {r['name']}: {r['note']}")
        if self.skipped:
            lines.append(f"not measured (budget {self.budget_s:.0f} s): " + ", ".join(self.skipped))
        lines.append("")
        lines.append(f"{'scenario':<40} {'method':<38} {'target':>7}  measured here")
        for m in self.matrix:
            lines.append(f"{m['scenario']:<40} {m['method']:<38} {m['target']:>7}  {m['measured']}")
        return "\n".join(lines)


def _quality(model_or_fn, example, dense_out, eval_fn) -> float:
    if eval_fn is not None:
        return float(eval_fn(model_or_fn))
    with torch.inference_mode():
        out = first_tensor(call(model_or_fn, example))
    a, b = out.reshape(out.shape[0], -1).float(), dense_out.reshape(dense_out.shape[0], -1).float()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def _size(model: nn.Module, kind: str, folder: str) -> int:
    import prunekit as pk

    path = os.path.join(folder, f"{time.monotonic_ns()}.safetensors")
    if kind == "int8":
        pk.save(model, path, quantize="int8", compress="lzma")
    else:
        pk.save(model, path)
    size = os.path.getsize(path)
    os.remove(path)
    return size


def _pareto(rows: list[dict]) -> None:
    ok = [r for r in rows if not r.get("error")]
    for r in ok:
        r["pareto"] = not any(
            o is not r and o["speedup"] >= r["speedup"] and o["size_ratio"] <= r["size_ratio"]
            and o["quality"] >= r["quality"]
            and (o["speedup"] > r["speedup"] or o["size_ratio"] < r["size_ratio"] or o["quality"] > r["quality"])
            for o in ok)


def _matrix(rows: list[dict], dense_quality: float, quality_floor: float) -> list[dict]:
    """The seed's matrix (scenario -> method), filled with the best measured candidate for each.

    Within a scenario the pick is the best candidate by the scenario's criterion (fastest, smallest
    file...) at or above the quality floor; when none reaches it, the best by that criterion anyway,
    marked as one-shot quality to recover by fine-tuning, with the best-quality candidate named.
    """
    ok = [r for r in rows if not r.get("error")]
    out = []

    def add(scenario, pool, key, note, recover=True):
        good = [r for r in pool if r["quality"] >= quality_floor]
        if not pool:
            out.append({"scenario": scenario, "method": "-", "target": "-", "measured": "no candidate measured",
                        "notes": note})
            return
        # the scenario's own criterion (fastest, smallest...) among candidates at the floor; below it, the
        # same criterion when recovery is an option, else (no retraining) the best quality
        best = max(good or pool, key=key if good or recover else lambda r: (r["quality"], r["speedup"]))
        measured = f"{best['speedup']:.2f}x speed, {best['size_ratio']:.2f}x file, quality {best['quality']:.3f}"
        if not good and not recover:
            measured += f" (the best quality here, below the floor {quality_floor:.3f})"
        elif not good:
            safest = max(pool, key=lambda r: (r["quality"], r["speedup"]))
            measured += f" (below the floor {quality_floor:.3f}: recover it: advise(recover=...) or prunekit.recipes.recover"
            if safest is not best:
                measured += f"; best quality here: {safest['name']}, {safest['quality']:.3f}"
            measured += ")"
        out.append({"scenario": scenario, "method": best["name"], "target": f"{best['sparsity']:.0%}",
                    "measured": measured, "notes": note})

    faster = [r for r in ok if r["speedup"] > 1.0]
    add("this machine, fastest at acceptable quality", faster, lambda r: r["speedup"],
        "measured here, interleaved with dense")
    add("mobile / runtimes without sparse kernels", [r for r in ok if r["name"].startswith("structured")],
        lambda r: r["speedup"], "channels removed: any runtime gets the speed")
    add("GPU with 2:4 tensor cores (A100/H100)", [r for r in ok if r["name"] == "2:4"], lambda r: r["quality"],
        "quality measured here; the speed needs such a GPU (prunekit.deploy.semi_structured)")
    add("microcontroller / smallest file", ok, lambda r: -r["size_ratio"], "file size measured here")
    add("quick win, no retraining", [r for r in faster if "int8" in r["name"] or r["name"] == "structured 30%"],
        lambda r: r["speedup"], "no data needed", recover=False)
    return out


def advise(
    model: nn.Module,
    example_inputs: Any,
    eval_fn: Callable[[Any], float] | None = None,
    budget_s: float = 300.0,
    threads: int | None = None,
    candidates: list[Candidate] | None = None,
    quality_floor: float | None = None,
    repeats: int = 7,
    progress: bool = True,
    recover: float | str | None = None,
    data: Any = None,
    **deprecated,
) -> Advice:
    """Build, time, size and score each candidate on this machine; return the measured matrix.

    Changes nothing in ``model`` (every candidate works on a copy).

    Args:
        model: the dense model, in eval mode.
        example_inputs: what it runs on in deployment (batch size and sequence length matter for speed).
        eval_fn: ``eval_fn(model_or_callable) -> float``, higher is better (accuracy); called on the dense
            model and every candidate. Without it, quality is the mean cosine similarity of each
            candidate's outputs to the dense model's on ``example_inputs``.
        budget_s: stop starting new candidates once this much time is spent (each takes seconds to a
            minute: pruning, the sparse runtime's per-layer timing, the interleaved comparison).
        threads: ``torch.set_num_threads`` for all measurements (default: the current setting).
        candidates: the list to try (default :func:`default_candidates`).
        quality_floor: candidates below it are not recommended (default: 0.99 x the dense quality
            with ``eval_fn``, cosine 0.9 without).
        repeats: timed blocks per comparison (``rounds=`` is its deprecated name).
        progress: show a progress bar (tqdm) per candidate.
        recover: seconds (or ``"20m"``) to spend, after the one-shot round, recovering the fastest
            masked candidates that fall below the floor (:func:`prunekit.recipes.recover`, distilled
            from ``model``); each recovered one is measured again and gets its own row
            (``recovered_from``), the one-shot row its ``recovered_quality``. Not charged to ``budget_s``.
        data: inputs to recover on (see :mod:`prunekit.inputs`); default: ``example_inputs`` alone.

    Returns:
        :class:`Advice`; ``print(advice)`` shows the Pareto table and the filled-in matrix.

    Example:
        >>> advice = prunekit.advise(model, torch.randn(1, 3, 224, 224), budget_s=300)
        >>> print(advice); advice.to_json("advise.json")
    """
    import prunekit as pk
    from prunekit.deploy.kernels import load as load_kernels

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not math.isfinite(budget_s) \
            or budget_s <= 0:
        raise ValueError(f"budget_s={budget_s!r} must be a positive number of seconds, e.g. 300")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} must be a positive int, e.g. 2 (or None for the current setting)")
    repeats = old_kwargs("advise", deprecated, {"rounds": "repeats"}).get("repeats", repeats)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an int >= 1, e.g. 7")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError("eval_fn must be a function (model) -> float, higher is better")
    if quality_floor is not None and (not isinstance(quality_floor, (int, float)) or not math.isfinite(quality_floor)):
        raise ValueError(f"quality_floor={quality_floor!r} must be a number (the quality a pick must reach)")
    if recover is not None:
        recover = parse_duration(recover, "recover")
    threads = threads or torch.get_num_threads()
    candidates = default_candidates() if candidates is None else list(candidates)
    if any(not isinstance(c, Candidate) for c in candidates):
        raise TypeError("candidates must be a list of prunekit.advise.Candidate (see default_candidates())")
    model.eval()
    with torch.inference_mode():
        try:
            dense_out = first_tensor(call(model, example_inputs))
        except Exception as e:
            raise ValueError(f"the model does not run on example_inputs: {type(e).__name__}: {e}") from e
    load_kernels()  # a first-use build (about a minute, announced) is not charged to the budget
    start = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="prunekit-advise-")
    folder = scratch.name
    from torch.utils._pytree import tree_flatten

    batch = next(int(t.shape[0]) for t in tree_flatten(example_inputs)[0] if isinstance(t, torch.Tensor) and t.dim())
    dense_quality = _quality(model, example_inputs, dense_out, eval_fn)
    dense_size = _size(model, "masks", folder)
    floor = quality_floor if quality_floor is not None else (0.99 * dense_quality if eval_fn else 0.9)
    rows, skipped, spent = [], [], []
    bar = progress_bar(total=len(candidates), desc="advise", unit="candidate", enabled=progress)
    dense_ms = []
    kept = {}  # masked candidates' pruned models, for recovery

    def measure(runnable, saved, kind) -> dict:
        result = pk.compare({"dense": model, "candidate": runnable}, example_inputs, repeats=repeats, threads=threads)
        dense_ms.append(result["dense"].median * 1e3)
        m = {"latency_ms": result["candidate"].median * 1e3, "dense_ms": result["dense"].median * 1e3,
             "speedup": result["candidate"].speedup, "size_bytes": _size(saved, kind, folder),
             "quality": _quality(runnable, example_inputs, dense_out, eval_fn)}
        m["size_ratio"] = m["size_bytes"] / dense_size
        m["items_per_s"] = batch / (m["latency_ms"] / 1e3)
        return m

    for cand in candidates:
        elapsed = time.perf_counter() - start
        expected = sum(spent) / len(spent) if spent else 0.0
        if elapsed + expected > budget_s:
            skipped.append(cand.name)
            bar.update(1)
            continue
        t0 = time.perf_counter()
        row = {"name": cand.name, "method": cand.method, "sparsity": cand.sparsity, "scenario": cand.scenario}
        try:
            work = copy.deepcopy(model)
            built = cand.build(work, example_inputs, threads)
            runnable, saved, kind = built[:3]
            if len(built) > 3 and built[3]:
                row["note"] = built[3]
            row.update(measure(runnable, saved, kind))
            if recover and kind != "structured" and not hasattr(saved, "_prunekit_structured"):
                kept[cand.name] = (saved, kind == "int8")
        except Exception as e:  # a candidate that does not apply to this model is a result, not a crash
            row["error"] = f"{type(e).__name__}: {e}"
        row["seconds"] = time.perf_counter() - t0
        spent.append(row["seconds"])
        rows.append(row)
        bar.set_postfix_str(cand.name)
        bar.update(1)
    bar.close()
    if recover:
        rows += recover_candidates(rows, kept, model, example_inputs, data, recover, floor, threads, repeats, measure)
    scratch.cleanup()
    _pareto(rows)
    dense_latency = sorted(dense_ms)[len(dense_ms) // 2] if dense_ms else float("nan")
    dense = {"latency_ms": dense_latency, "items_per_s": batch / (dense_latency / 1e3),
             "size_bytes": dense_size, "quality": dense_quality}
    return Advice(rows=rows, dense=dense, quality_kind="eval_fn" if eval_fn else "cosine", threads=threads,
                  budget_s=float(budget_s), elapsed_s=time.perf_counter() - start,
                  matrix=_matrix(rows, dense_quality, floor), skipped=skipped)
