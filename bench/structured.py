"""Structured pruning: prunekit vs Torch-Pruning 1.6.1 on ResNet-50, MobileNetV2, ViT-B/16 and MiniLM.

For each model and channel ratio (0.3, 0.5): parameters, MACs (both counted by
``prunekit.count_macs_params``), time to prune, and batch-1 latency of dense vs pruned models in
PyTorch and ONNX Runtime, 2 threads, every variant interleaved in one process (``prunekit.compare``,
medians). MobileNetV2 runs twice, with ``round_to=None`` and ``round_to=8``. Torch-Pruning
(a benchmark-only peer, ``pip install torch-pruning==1.6.1``) prunes the same models with its
group L2 magnitude importance, the classifier ignored, the same ratio and round_to, and no hand
fixes; when it fails, the table says so. Random weights (torchvision/transformers built offline);
MiniLM is the real all-MiniLM-L6-v2.

Run: ``.venv/bin/python bench/structured.py`` (part of ``make bench``). Writes
bench/results/structured.{json,md}.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sparse_runtime import Encoder  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.deploy import export_onnx  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RATIOS = (0.3, 0.5)


def models():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = torch.randn(1, 3, 224, 224)
        yield "ResNet-50", torchvision.models.resnet50().eval(), img, 8
        yield "MobileNetV2 (round_to None)", torchvision.models.mobilenet_v2().eval(), img, None
        yield "MobileNetV2 (round_to 8)", torchvision.models.mobilenet_v2().eval(), img, 8
        yield "ViT-B/16", torchvision.models.vit_b_16().eval(), img, 8
        from oneshot import load_minilm

        bert, tok = load_minilm()
        enc = tok(["Structured pruning removes whole heads and neurons, so dense kernels run a smaller model."] * 1,
                  padding="max_length", max_length=128, return_tensors="pt")
        yield "all-MiniLM-L6-v2", Encoder(bert).eval(), (enc["input_ids"], enc["attention_mask"]), 8


def classifier(model):
    for m in reversed(list(model.modules())):
        if isinstance(m, torch.nn.Linear):
            return m
    return None


def torch_pruning(model, example, ratio, round_to):
    """Torch-Pruning 1.6.1, its documented defaults for a quick L2 channel prune; None on failure."""
    try:
        import torch_pruning as tp
    except ImportError:
        return None, "not installed"
    model = copy.deepcopy(model)
    ignored = [classifier(model)] if not isinstance(model, Encoder) else []
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    try:
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to, num_heads=heads)
        pruner.step()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
        return (model, seconds), None
    except Exception as e:  # the peer's failure is a result
        return None, f"{type(e).__name__}: {str(e)[:120]}"


def onnx_path(model, example, tmp, name):
    names = ["input_ids", "attention_mask"] if isinstance(example, tuple) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(model, example, os.path.join(tmp, name + ".onnx"), input_names=names).path


def main() -> None:
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp(prefix="prunekit-structured-")
    rows = []
    for name, dense, example, round_to in models():
        macs0, params0 = pk.count_macs_params(dense, example)
        variants = {"dense PyTorch": dense, "dense ONNX Runtime": onnx_path(dense, example, tmp, "dense")}
        print(name, "dense exported", flush=True)
        info = {}
        for ratio in RATIOS:
            ours = copy.deepcopy(dense)
            t0 = time.perf_counter()
            report = pk.structured.prune_channels(ours, example, sparsity=ratio, round_to=round_to)
            seconds = time.perf_counter() - t0
            ours.eval()
            macs, params = pk.count_macs_params(ours, example)
            info[("prunekit", ratio)] = {"seconds": seconds, "macs": macs, "params": params,
                                         "kept_by_module": report.kept_by_module}
            variants[f"prunekit {ratio} PyTorch"] = ours
            try:
                variants[f"prunekit {ratio} ONNX Runtime"] = onnx_path(ours, example, tmp, f"pk{ratio}")
            except Exception as e:
                info[("prunekit", ratio)]["onnx_error"] = str(e)[:120]
            peer, error = torch_pruning(dense, example, ratio, round_to)
            if peer is None:
                info[("Torch-Pruning", ratio)] = {"error": error}
                continue
            theirs, seconds = peer
            theirs.eval()
            macs, params = pk.count_macs_params(theirs, example)
            info[("Torch-Pruning", ratio)] = {"seconds": seconds, "macs": macs, "params": params}
            variants[f"Torch-Pruning {ratio} PyTorch"] = theirs
            try:
                variants[f"Torch-Pruning {ratio} ONNX Runtime"] = onnx_path(theirs, example, tmp, f"tp{ratio}")
            except Exception as e:
                info[("Torch-Pruning", ratio)]["onnx_error"] = str(e)[:120]
        result = pk.compare(variants, example, repeats=9, threads=2)
        print(name, result, flush=True)
        med = {r.name: r.median for r in result.rows}
        for (tool, ratio), d in info.items():
            row = {"model": name, "tool": tool, "ratio": ratio, **d, "macs_dense": macs0, "params_dense": params0}
            if "macs" in d:
                row["macs_ratio"] = macs0 / d["macs"]
                for rt, base in (("PyTorch", "dense PyTorch"), ("ONNX Runtime", "dense ONNX Runtime")):
                    key = f"{tool} {ratio} {rt}"
                    if key in med:
                        row[f"ms_{rt}"] = med[key] * 1e3
                        row[f"speedup_{rt}"] = med[base] / med[key]
            row["dense_ms_PyTorch"] = med["dense PyTorch"] * 1e3
            row["dense_ms_ONNX Runtime"] = med["dense ONNX Runtime"] * 1e3
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(rows)


def write(rows) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "structured.json"), "w") as f:
        json.dump({"torch": torch.__version__, "threads": 2, "rows": rows}, f, indent=2)
    lines = [
        "# Structured pruning: prunekit vs Torch-Pruning 1.6.1",
        "",
        "Batch 1, 2 threads, every variant of a model interleaved in one process (medians). MACs and parameters",
        "counted the same way for both tools (`prunekit.count_macs_params`). Speedup: dense median / pruned median",
        "in the same runtime. Torch-Pruning ran with its group L2 importance, the classifier ignored, no hand fixes.",
        "",
        "| model | ratio | tool | time to prune | params kept | MACs kept | MAC ratio | speedup PyTorch | "
        "speedup ONNX Runtime | speedup / MAC ratio (ORT) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['ratio']} | {r['tool']} | failed: {r['error']} | | | | | | |")
            continue
        pt, ort = r.get("speedup_PyTorch"), r.get("speedup_ONNX Runtime")
        lines.append(
            f"| {r['model']} | {r['ratio']} | {r['tool']} | {r['seconds']:.1f} s | {r['params'] / r['params_dense']:.1%} | "
            f"{r['macs'] / r['macs_dense']:.1%} | {r['macs_ratio']:.2f}x | {pt:.2f}x | "
            + (f"{ort:.2f}x | {ort / r['macs_ratio']:.2f} |" if ort else "export failed | |"))
    dense = {}
    for r in rows:
        dense.setdefault(r["model"], (r["dense_ms_PyTorch"], r["dense_ms_ONNX Runtime"]))
    lines += ["", "Dense medians: " + "; ".join(f"{m} {a:.1f} ms PyTorch / {b:.1f} ms ONNX Runtime"
                                             for m, (a, b) in dense.items()) + ".",
              "Produced by `make bench` (bench/structured.py)."]
    with open(os.path.join(RESULTS, "structured.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
