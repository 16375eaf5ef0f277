"""Per-layer kernel benchmark: prunekit's sparse kernels vs dense PyTorch at 90% sparsity.

MiniLM's Linear shapes at 128 tokens (fp32 sparse in both builds, sparse int8 on unstructured and
1x4 weights, PyTorch's dynamic int8) and ResNet-shaped convolutions at batch 1, each layer timed
alone, interleaved in rounds, medians, 2 threads. The AVX-512 rows need such a CPU; elsewhere they
are left out. Random weights: speed only.

Run: ``.venv/bin/python bench/kernels.py`` (part of ``make bench``). Writes bench/results/kernels.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sparse_runtime import cpu_name  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.deploy import SparseConv2d, SparseLinear, SparseLinearInt8  # noqa: E402
from prunekit.deploy.kernels import load  # noqa: E402
from prunekit.deploy.runtime import dynamic_int8  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timed(fns: dict, x, rounds: int = 21, reps: int = 20) -> dict:
    samples = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f(x)
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    f(x)
                samples[k].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) * 1e6 for k, v in samples.items()}


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    native, portable = load(), load("portable")
    rows = []
    for pattern in ("unstructured", "block:1x4"):
        for out_f, in_f in ((384, 384), (1536, 384), (384, 1536)):
            lin = nn.Linear(in_f, out_f)
            pk.prune(lin, 0.9, pattern=pattern)
            pk.finalize(lin)
            fns = {"dense": lin, "sparse portable": SparseLinear(lin, portable), "int8 dense (fbgemm)": dynamic_int8(lin)}
            if native.isa() == "avx512":
                fns["sparse avx512"] = SparseLinear(lin, native)
            if native.has_vnni():
                fns["sparse int8 (VNNI)"] = SparseLinearInt8(lin, native)
            x = torch.randn(128, in_f)
            row = {"layer": f"Linear {in_f}->{out_f}, {pattern}, 128 tokens", "us": timed(fns, x)}
            native_fp32 = fns.get("sparse avx512", fns["sparse portable"])
            torch.set_num_threads(1)  # a pass of its own: resizing the pool between calls would cost both
            row["us_1_thread"] = timed({"sparse": native_fp32, "dense": lin}, x)
            torch.set_num_threads(2)
            rows.append(row)
    for cin, cout, k, stride, hw in ((64, 64, 3, 1, 56), (256, 64, 1, 1, 56), (64, 256, 1, 1, 56),
                                     (128, 128, 3, 2, 56), (256, 256, 3, 1, 14), (512, 2048, 1, 1, 7)):
        conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        pk.prune(conv, 0.9)
        pk.finalize(conv)
        fns = {"dense": conv, "sparse portable": SparseConv2d(conv, portable)}
        if native.isa() == "avx512":
            fns["sparse avx512"] = SparseConv2d(conv, native)
        rows.append({"layer": f"Conv {cin}->{cout} {k}x{k}/{stride} at {hw}x{hw}, unstructured",
                     "us": timed(fns, torch.randn(1, cin, hw, hw), rounds=11, reps=5)})
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "kernels.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cpu": cpu_name(), "rows": rows}, f, indent=2)
    columns = ["sparse portable", "sparse avx512", "sparse int8 (VNNI)", "int8 dense (fbgemm)"]
    lines = ["# Sparse kernels per layer, 90% sparsity, 2 threads (speedup over dense PyTorch fp32; us in brackets)", "",
             f"torch {torch.__version__}; {cpu_name()}; each layer alone, interleaved rounds, medians. "
             "Produced by `make bench` (bench/kernels.py).", "",
             "| layer | dense us | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for r in rows:
        us = r["us"]
        cells = [f"{us['dense'] / us[c]:.2f}x ({us[c]:.0f})" if c in us else "-" for c in columns]
        lines.append(f"| {r['layer']} | {us['dense']:.0f} | " + " | ".join(cells) + " |")
    name = "avx512" if native.isa() == "avx512" else "portable"
    lines += ["", f"Threads: the {name} fp32 kernel and dense PyTorch at 2 threads against 1 (same layers, a "
              "separate 1-thread pass):", "", "| layer | sparse 1 thread us | sparse 2 threads / 1 | dense 2 threads / 1 |",
              "|---|---|---|---|"]
    for r in rows:
        if "us_1_thread" in r:
            one, two = r["us_1_thread"], r["us"]
            lines.append(f"| {r['layer']} | {one['sparse']:.0f} | {one['sparse'] / two[f'sparse {name}']:.2f}x | "
                         f"{one['dense'] / two['dense']:.2f}x |")
    with open(os.path.join(RESULTS, "kernels.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
