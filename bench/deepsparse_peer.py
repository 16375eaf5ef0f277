"""Benchmark peer: DeepSparse 1.8 on ONNX files, in its own venv and process (it pins numpy<2).

Not part of prunekit and never imported by it. bench/sparse_runtime.py runs it as
``<deepsparse venv>/bin/python bench/deepsparse_peer.py OUT.json NAME=PATH ...`` with
``NM_DISABLE_ANALYTICS=True``. Each ONNX file is copied first (DeepSparse rewrites files in place when
given input shapes). ONNX Runtime runs the dense files as well (names starting or ending with
"dense"), so that ratios can be chained through the dense ONNX Runtime times measured in both
processes; a name written ``ort:NAME`` is timed in ONNX Runtime only. Interleaved rounds, medians,
2 threads.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np


def _inputs(path: str, ort) -> list:
    """Inputs for one ONNX file from its signature: token ids (1000) then ones for int64 inputs (a
    transformer's ids and attention mask; a dynamic sequence is 128 tokens), a fixed random image for
    float ones; a dynamic batch is 1."""
    rng = np.random.default_rng(0)
    arrays = []
    for i in ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs():
        shape = [d if isinstance(d, int) else (1 if j == 0 else 128) for j, d in enumerate(i.shape)]
        if "int64" in i.type:
            arrays.append(np.full(shape, 1000 if not arrays else 1, dtype=np.int64))
        else:
            arrays.append(rng.standard_normal(shape).astype(np.float32))
    return arrays


def main() -> None:
    out, specs = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
    import onnxruntime as ort
    from deepsparse import Engine

    tmp = tempfile.mkdtemp(prefix="ds-peer-")
    runners = {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    errors = {}  # a file DeepSparse cannot compile costs its row, not the whole peer column
    for name, path in specs.items():
        ort_only = name.startswith("ort:")  # a chain file another process already ran in DeepSparse
        name = name.removeprefix("ort:")
        inputs = _inputs(path, ort)
        if name.startswith("dense") or name.endswith("dense"):  # the files ratios are chained through
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]
            runners[f"{name} (ONNX Runtime)"] = lambda s=sess, n=names, x=inputs: s.run(None, dict(zip(n, x)))
        if ort_only:
            continue
        private = os.path.join(tmp, os.path.basename(path))
        shutil.copy(path, private)
        try:
            engine = Engine(model=private, batch_size=1, num_cores=2)
            engine.run(inputs)
        except Exception as e:  # noqa: BLE001 - reported in the results instead
            errors[name] = f"{type(e).__name__}: {e}"[:500]
            print(f"DeepSparse could not run {name}: {errors[name]}", file=sys.stderr)
            continue
        runners[f"{name} (DeepSparse)"] = lambda e=engine, x=inputs: e.run(x)
    samples = {k: [] for k in runners}
    for fn in runners.values():
        for _ in range(5):
            fn()
    keys = list(runners)
    for r in range(15):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            for _ in range(3):
                runners[k]()
            t0 = time.perf_counter()
            for _ in range(5):
                runners[k]()
            samples[k].append((time.perf_counter() - t0) / 5)
    with open(out, "w") as f:
        json.dump({**{k: statistics.median(v) for k, v in samples.items()}, "errors": errors}, f, indent=2)


if __name__ == "__main__":
    main()
