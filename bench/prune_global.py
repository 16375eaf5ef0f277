"""Global magnitude pruning of a 110M-parameter BERT-base-shaped Linear stack to 90%.

Measures, in one run:
  A. wall time and extra peak memory (RSS above the built model) of ``prunekit.prune`` vs
     ``torch.nn.utils.prune.global_unstructured``; each call in a fresh child process (peak RSS is
     per process), alternating methods, several repeats, medians reported.
  B. forward latency (1 x 128 tokens, 2 threads) of the masked model vs the same model finalized,
     and of torch.nn.utils.prune's masked model, interleaved in one process.

Run: ``make bench`` (or ``.venv/bin/python bench/prune_global.py``). Writes
bench/results/prune_global.json and .md.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import psutil
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import prunekit as pk
from prunekit.bench import compare

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SPARSITY = 0.9


def bert_base_linears(seed: int = 0) -> nn.Module:
    """12 BERT-base layers as Linears (q, k, v, o, ff1, ff2) plus the 30522-way vocabulary projection."""
    torch.manual_seed(seed)
    d, ff, vocab = 768, 3072, 30522
    layers = []
    for _ in range(12):
        layers += [nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d)]
    layers += [nn.Linear(d, d), nn.Tanh(), nn.Linear(d, vocab)]
    return nn.Sequential(*layers)


def child(method: str) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    torch.set_num_threads(2)
    model = bert_base_linears()
    rss0 = psutil.Process().memory_info().rss
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if method == "prunekit":
        pk.prune(model, SPARSITY)
    else:
        params = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=SPARSITY)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    print(json.dumps({
        "method": method, "wall_s": wall, "extra_peak_mb": (max(peak, peak0) - rss0) / 2**20,
        "zeros": zeros, "weights": n, "params": sum(p.numel() for p in model.parameters()),
    }))


def part_a(repeats: int) -> dict:
    runs = {"prunekit": [], "torch": []}
    for i in range(repeats):
        for method in (("prunekit", "torch") if i % 2 == 0 else ("torch", "prunekit")):
            out = subprocess.run([sys.executable, __file__, "--child", method], capture_output=True, text=True, check=True)
            runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {method:9s} {runs[method][-1]['wall_s']:.2f} s, +{runs[method][-1]['extra_peak_mb']:.0f} MB", flush=True)
    summary = {}
    for method, rs in runs.items():
        summary[method] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "wall_s_all": [r["wall_s"] for r in rs],
            "extra_peak_mb_median": statistics.median(r["extra_peak_mb"] for r in rs),
            "extra_peak_mb_all": [r["extra_peak_mb"] for r in rs],
            "zeros": rs[0]["zeros"],
        }
    summary["weights"] = runs["prunekit"][0]["weights"]
    summary["params"] = runs["prunekit"][0]["params"]
    summary["time_ratio"] = summary["prunekit"]["wall_s_median"] / summary["torch"]["wall_s_median"]
    summary["peak_ratio"] = summary["prunekit"]["extra_peak_mb_median"] / summary["torch"]["extra_peak_mb_median"]
    return summary


def part_b(rounds: int) -> dict:
    masked = bert_base_linears().eval()
    pk.prune(masked, SPARSITY)
    final = pk.finalize(copy.deepcopy(masked)).eval()
    tp = bert_base_linears().eval()
    torch_prune.global_unstructured(
        [(m, "weight") for m in tp.modules() if isinstance(m, nn.Linear)], pruning_method=torch_prune.L1Unstructured, amount=SPARSITY
    )
    x = torch.randn(1, 128, 768)
    result = compare({"finalized": final, "prunekit masked": masked, "torch.prune masked": tp}, x, repeats=rounds, threads=2)
    return result.to_dict()


def write(a: dict, b: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "sparsity": SPARSITY}
    with open(os.path.join(RESULTS, "prune_global.json"), "w") as f:
        json.dump({"meta": meta, "prune": a, "forward": b}, f, indent=2)
    pa, ta = a["prunekit"], a["torch"]
    fw = {v["name"]: v for v in b["variants"]}
    lines = [
        f"# Global magnitude pruning to {SPARSITY:.0%}: {a['params'] / 1e6:.1f}M-parameter BERT-base-shaped Linear stack",
        "",
        f"torch {meta['torch']}, {meta['cpu_count']} cores, 2 threads. Produced by `make bench` (bench/prune_global.py).",
        "",
        "| method | wall time (median) | extra peak RSS (median) | weights zeroed |",
        "|---|---|---|---|",
        f"| `torch.nn.utils.prune.global_unstructured` | {ta['wall_s_median']:.2f} s | {ta['extra_peak_mb_median']:.0f} MB | {ta['zeros']:,} |",
        f"| `prunekit.prune` | {pa['wall_s_median']:.2f} s | {pa['extra_peak_mb_median']:.0f} MB | {pa['zeros']:,} |",
        f"| ratio prunekit / torch | {a['time_ratio']:.2f}x | {a['peak_ratio']:.2f}x | |",
        "",
        "Forward, 1 x 128 tokens, eval mode, interleaved medians:",
        "",
        "| model | median ms | p10-p90 ms | vs finalized |",
        "|---|---|---|---|",
    ]
    for name in ("finalized", "prunekit masked", "torch.prune masked"):
        v = fw[name]
        lines.append(f"| {name} | {v['median_ms']:.1f} | {v['p10_ms']:.1f}-{v['p90_ms']:.1f} | {fw['finalized']['median_ms'] / v['median_ms']:.2f}x speed ({v['median_ms'] / fw['finalized']['median_ms']:.2f}x time) |")
    lines += [
        "",
        "Goals (issue 2): prunekit at most 0.5x torch's time and no more peak memory; masked forward <= 1.15x finalized.",
        "Both methods zero the same count (round(0.9 N)). With random initialization the ff2 layers (fan-in 3072)",
        "hold the smallest weights, so global magnitude empties several of them; prunekit warns about it.",
    ]
    with open(os.path.join(RESULTS, "prune_global.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        sys.exit(0)
    print("A. prune time and peak memory (fresh process per call)")
    a = part_a(repeats=int(os.environ.get("BENCH_REPEATS", "3")))
    print("B. forward latency")
    b = part_b(rounds=int(os.environ.get("BENCH_ROUNDS", "15")))
    write(a, b)
