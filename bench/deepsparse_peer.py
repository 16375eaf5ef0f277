"""Benchmark peer: DeepSparse 1.8 on ONNX files, in its own venv and process (it pins numpy<2).

Not part of prunekit and never imported by it. bench/sparse_runtime.py runs it as
``<deepsparse venv>/bin/python bench/deepsparse_peer.py OUT.json NAME=PATH ...`` with
``NM_DISABLE_ANALYTICS=True``. Each ONNX file is copied first (DeepSparse rewrites files in place when
given input shapes). ONNX Runtime runs the first file as well, so that ratios can be chained through
the dense ONNX Runtime time measured in both processes. Interleaved rounds, medians, 2 threads.
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


def main() -> None:
    out, specs = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
    import onnxruntime as ort
    from deepsparse import Engine

    tmp = tempfile.mkdtemp(prefix="ds-peer-")
    inputs = [np.full((1, 128), 1000, dtype=np.int64), np.ones((1, 128), dtype=np.int64)]
    runners = {}
    first = next(iter(specs))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(specs[first], opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    runners[f"{first} (ONNX Runtime)"] = lambda: sess.run(None, dict(zip(names, inputs)))
    for name, path in specs.items():
        private = os.path.join(tmp, os.path.basename(path))
        shutil.copy(path, private)
        engine = Engine(model=private, batch_size=1, num_cores=2)
        runners[f"{name} (DeepSparse)"] = lambda e=engine: e.run(inputs)
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
        json.dump({k: statistics.median(v) for k, v in samples.items()}, f, indent=2)


if __name__ == "__main__":
    main()
