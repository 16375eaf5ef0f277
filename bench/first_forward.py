"""Seconds from ``import prunekit`` to the first sparse forward, in a fresh process.

Two ways the kernels can arrive: the libraries built when prunekit installed (setup.py), and the
first-use build (what every process paid before, timed with an empty build cache and the prebuilt
libraries declined). Each fresh process imports prunekit, prunes a 384 x 384 Linear to 90%,
rebinds it with ``to_sparse_runtime`` and runs one forward; the prebuilt case five times (median),
the first-use build once (it takes minutes).

Run: ``.venv/bin/python bench/first_forward.py`` (part of ``make bench``). Writes
bench/results/first_forward.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CODE = """
import time
t0 = time.perf_counter()
import prunekit as pk
from prunekit.deploy import kernels
if {decline}:
    kernels._prebuilt = lambda isa, key: None  # as an install without the ahead-of-time build
import torch
from torch import nn
from prunekit.deploy import to_sparse_runtime
model = nn.Sequential(nn.Linear(384, 384))
pk.prune(model, 0.9)
fast, report = to_sparse_runtime(model)
with torch.no_grad():
    fast(torch.randn(8, 384))
print(round(time.perf_counter() - t0, 3), fast[0]._k.__name__)
"""


def run(decline: bool, cache: str) -> tuple[float, str]:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": cache}
    done = subprocess.run([sys.executable, "-c", CODE.format(decline=decline)], capture_output=True, text=True,
                          env=env, timeout=1800, check=True)
    seconds, module = done.stdout.split()
    return float(seconds), module


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="prunekit-first-") as cache:
        prebuilt = [run(False, cache) for _ in range(5)]
        first_use = run(True, cache)  # empty cache: compiles
        cached = run(True, cache)  # the first-use build, cached by the run before
    result = {
        "prebuilt_s": [s for s, _ in prebuilt], "prebuilt_module": prebuilt[0][1],
        "prebuilt_median_s": statistics.median(s for s, _ in prebuilt),
        "first_use_build_s": first_use[0], "first_use_module": first_use[1], "first_use_cached_s": cached[0],
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "first_forward.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [
        "# Import to first sparse forward, fresh process (2-core AMD EPYC, AVX-512)",
        "",
        "`import prunekit`, prune a 384 x 384 Linear to 90%, `to_sparse_runtime`, one forward of 8 tokens; "
        "wall seconds inside the process. Produced by `bench/first_forward.py`.",
        "",
        "| kernels from | seconds | module |",
        "|---|---|---|",
        f"| built at install (median of 5) | {result['prebuilt_median_s']:.2f} | `{result['prebuilt_module']}` |",
        f"| first-use build, empty cache | {result['first_use_build_s']:.1f} | `{result['first_use_module']}` |",
        f"| first-use build, cached | {result['first_use_cached_s']:.2f} | `{result['first_use_module']}` |",
    ]
    with open(os.path.join(RESULTS, "first_forward.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
