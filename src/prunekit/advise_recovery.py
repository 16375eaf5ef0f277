"""``advise(recover=...)``: recover the promising candidates by distillation and measure them again.

A candidate whose one-shot quality is below the floor but which is faster than dense is what
recovery is for. Within the recovery budget, the fastest such candidates (masked ones: their zeros
become masks again) are recovered with :func:`prunekit.recipes.recover` from the dense model, then
rebuilt for the runtime, timed against dense in one interleaved run, sized and scored again. Each
gets a row of its own (``recovered_from`` names the one-shot row), so the table and the Pareto front
show one-shot and recovered quality side by side.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

__all__ = ["recover_candidates", "parse_duration"]


def parse_duration(text: str | float | int, name: str = "--recover") -> float:
    """Seconds from ``"20m"``, ``"90s"``, ``"1h"`` or a plain number of seconds.

    Example:
        >>> parse_duration("20m")
        1200.0
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600}.get(s[-1:], None)
        try:
            value = float(s[:-1] if scale else s) * (scale or 1)
        except ValueError:
            raise ValueError(f"{name} {text!r} is not a duration: give seconds, or e.g. 90s, 20m, 1h") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} {text!r} must be a positive duration, e.g. 20m")
    return value


def _remasked(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of a finalized pruned model with a mask on every Linear/Conv weight that holds zeros."""
    import prunekit as pk

    student = copy.deepcopy(model)
    found = {f"{n}.weight": m.weight.detach() != 0 for n, m in student.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d)) and bool((m.weight == 0).any())}
    pk.apply_masks(student, found)
    return student, found


def recover_candidates(rows: list[dict], kept: dict[str, tuple[nn.Module, bool]], model: nn.Module,
                       example_inputs: Any, data: Iterable | None, budget_s: float, floor: float,
                       threads: int, repeats: int, measure: Callable[[Any, nn.Module, str], dict]) -> list[dict]:
    """Rows for the recovered versions of the masked candidates in ``kept`` (name -> (pruned model,
    int8)) that are faster than dense but below ``floor``, fastest first, sharing ``budget_s``.
    ``measure(runnable, saved, kind)`` times, sizes and scores a rebuilt model like advise does."""
    import prunekit as pk
    from prunekit.deploy import to_sparse_runtime

    pool = sorted((r for r in rows if not r.get("error") and r["name"] in kept and r["speedup"] > 1.0
                   and r["quality"] < floor), key=lambda r: -r["speedup"])
    if not pool:
        return []
    batches = list(data) if data is not None else [example_inputs]
    share = budget_s / len(pool)
    out = []
    for row in pool:
        saved, int8 = kept[row["name"]]
        t0 = time.perf_counter()
        new = {"name": f"{row['name']}, recovered", "method": row["method"] + " + recover",
               "sparsity": row["sparsity"], "scenario": row.get("scenario", ""), "recovered_from": row["name"]}
        try:
            student, found = _remasked(saved)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = pk.recipes.recover(student, model, batches, budget_s=share, progress=False,
                                            include=lambda m, f, names=set(found): f"{f}.weight" in names)
                pk.finalize(student)
                runnable = to_sparse_runtime(student, example_inputs, threads=threads, int8=int8).model
            new.update(measure(runnable, student, "int8" if int8 else "masks"))
            new.update(recover_steps=result.steps, recover_s=result.seconds)
        except Exception as e:  # a candidate that cannot be recovered is a result, not a crash
            new["error"] = f"{type(e).__name__}: {e}"
        new["seconds"] = time.perf_counter() - t0
        row["recovered_quality"] = new.get("quality")
        out.append(new)
    return out
