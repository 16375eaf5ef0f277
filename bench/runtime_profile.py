"""Where the time of a sparse runtime model goes: the 90% sparse all-MiniLM-L6-v2 (batch 1 x 128 tokens,
2 threads) eager and under ``torch.compile``, by ``torch.profiler`` self CPU time per operator group.

The sparse kernels are one group; the rest (attention, the elementwise and LayerNorm work, tensor
bookkeeping, torch.compile's guards) is what bench/sparse_runtime.py calls the dense remainder. Profiled
time includes the profiler's own cost per operator, so the unprofiled median is given beside it.

Run: ``.venv/bin/python bench/runtime_profile.py``. Writes bench/results/runtime_profile.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.profiler import profile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sparse_runtime import cpu_name, minilm_128, pruned  # noqa: E402

from prunekit.deploy import to_sparse_runtime  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GROUPS = [("sparse kernels", ("prunekit_",)), ("attention", ("scaled_dot_product", "_flash_attention", "softmax", "bmm", "baddbmm")),
          ("compiled graph (Inductor kernels)", ("CompiledFxGraph", "Torch-Compiled Region")),
          ("dense Linear (pooler)", ("aten::addmm", "aten::mm", "aten::linear")),  # before "aten::add"
          ("GELU, LayerNorm, adds (eager)", ("aten::gelu", "aten::add", "layer_norm", "aten::mul", "aten::tanh")),
          ("embeddings", ("embedding", "index_select")),
          ("torch.compile guards", ("TorchDynamo", "Pregraph", "Cache Lookup"))]


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "tensor bookkeeping and the rest (empty, view, reshape, ...)"


def median_ms(fn, x, n=30) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(*x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def breakdown(fn, x, calls=20) -> dict:
    with profile() as prof:
        for _ in range(calls):
            fn(*x)
    out: dict = {}
    for e in prof.key_averages():
        out[group_of(e.key)] = out.get(group_of(e.key), 0.0) + e.self_cpu_time_total / 1e3 / calls
    return out


def main() -> None:
    torch.set_num_threads(2)
    dense, _, x = minilm_128()
    fast = to_sparse_runtime(pruned(dense, 0.9), x, threads=2).model
    compiled = torch.compile(fast)
    rows = {}
    with torch.no_grad():
        compiled(*x)
        for fn in (fast, compiled):
            median_ms(fn, x, 10)  # warm-up
        medians = {"eager": [], "compiled": []}
        for _ in range(5):  # interleaved rounds
            medians["eager"].append(median_ms(fast, x))
            medians["compiled"].append(median_ms(compiled, x))
        for name, fn in (("eager", fast), ("compiled", compiled)):
            rows[name] = {"median_ms": statistics.median(medians[name]), "profiled_ms_per_forward": breakdown(fn, x)}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "runtime_profile.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cpu": cpu_name(), "rows": rows}, f, indent=2)
    groups = sorted({g for r in rows.values() for g in r["profiled_ms_per_forward"]},
                    key=lambda g: -rows["eager"]["profiled_ms_per_forward"].get(g, 0.0))
    lines = ["# Where a sparse runtime model's time goes (90% sparse all-MiniLM-L6-v2, batch 1 x 128 tokens, 2 threads)",
             "", f"torch {torch.__version__}; {cpu_name()}. Self CPU time per forward by operator group "
             "(torch.profiler, 20 forwards; the profiler adds its own cost per operator). Produced by "
             "bench/runtime_profile.py.", "", "| group | eager ms | + torch.compile ms |", "|---|---|---|"]
    for g in groups:
        e, c = (rows[k]["profiled_ms_per_forward"].get(g, 0.0) for k in ("eager", "compiled"))
        lines.append(f"| {g} | {e:.2f} | {c:.2f} |")
    totals = [sum(rows[k]["profiled_ms_per_forward"].values()) for k in ("eager", "compiled")]
    lines += [f"| total profiled | {totals[0]:.2f} | {totals[1]:.2f} |",
              f"| unprofiled median (5 interleaved rounds) | {rows['eager']['median_ms']:.2f} | {rows['compiled']['median_ms']:.2f} |",
              "", "The profiler times operators, not the Python between them: eager, the unprofiled median exceeds "
              f"the profiled operators by {rows['eager']['median_ms'] - totals[0]:.2f} ms (the model's own modules' "
              "Python, less the profiler's cost); compiled, the difference is "
              f"{rows['compiled']['median_ms'] - totals[1]:.2f} ms.", ""]
    with open(os.path.join(RESULTS, "runtime_profile.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
