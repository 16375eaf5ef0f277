"""Size report: LeNet-300-100 on Fashion-MNIST, dense vs 92% sparse, fp32 vs int8, plain vs compressed.

Trains the dense model, prunes it to 92% by iterative pruning with fine-tuning (as
bench/fashion_mnist.py), then writes every deployable form and measures its size on disk and the
test accuracy of what loads back from it (ONNX files run with ONNX Runtime).

Run: ``.venv/bin/python bench/sizes.py`` (part of ``make bench``). Writes bench/results/sizes.{json,md}.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import warnings

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist import RESULTS, accuracy, lenet, load, trainer  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.bench import as_callable  # noqa: E402
from prunekit.deploy.onnx import export_onnx  # noqa: E402
from prunekit.recipes import iterative_pruning  # noqa: E402


def onnx_accuracy(path, x, y) -> float:
    run = as_callable(path, threads=2)
    return (run(x).argmax(1) == y).float().mean().item()


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    xtr, ytr = load("train")
    xte, yte = load("test")
    dense = lenet()
    trainer(xtr, ytr, 20, "sgd", 0.05, 128)(dense)
    sparse = copy.deepcopy(dense)
    iterative_pruning(sparse, trainer(xtr, ytr, 3, "sgd", 0.01, 128, seed=100), lambda m: accuracy(m, xte, yte),
                      target=0.92, rounds=8, progress=False)
    pk.finalize(sparse)
    out = tempfile.mkdtemp(prefix="prunekit-sizes-")
    rows = []

    def add(label, path, acc, nonzeros=None):
        rows.append({"form": label, "bytes": os.path.getsize(path), "accuracy": acc, "nonzeros": nonzeros})

    p = os.path.join(out, "dense.safetensors")
    save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, p)
    add("dense fp32, safetensors", p, accuracy(dense, xte, yte), pk.sparsity_report(dense).model_nonzeros)
    info = export_onnx(dense, xte[:1], os.path.join(out, "dense.onnx"))
    add("dense fp32, ONNX", info.path, onnx_accuracy(info.path, xte, yte), info.nonzeros)
    info = export_onnx(dense, xte[:1], os.path.join(out, "dense-int8.onnx"), quantize="int8")
    add("dense int8, ONNX (dynamic quantization)", info.path, onnx_accuracy(info.path, xte, yte), info.nonzeros)
    info = export_onnx(sparse, xte[:1], os.path.join(out, "sparse.onnx"))
    add("92% sparse fp32, ONNX", info.path, onnx_accuracy(info.path, xte, yte), info.nonzeros)
    info = export_onnx(sparse, xte[:1], os.path.join(out, "sparse-int8.onnx"), quantize="int8")
    add("92% sparse int8, ONNX", info.path, onnx_accuracy(info.path, xte, yte), info.nonzeros)
    for label, q, c in [("92% sparse fp32, prunekit file", None, None), ("92% sparse fp32, prunekit file + lzma", None, "lzma"),
                        ("92% sparse int8, prunekit file", "int8", None), ("92% sparse int8, prunekit file + lzma", "int8", "lzma"),
                        ("92% sparse int4, prunekit file + lzma", "int4", "lzma")]:
        saved = pk.save(sparse, os.path.join(out, f"sparse-{q}-{c}.pk"), quantize=q, compress=c)
        back = pk.load(saved.path, lenet(1))
        add(label, saved.path, accuracy(back, xte, yte), pk.sparsity_report(back).model_nonzeros)
    base = rows[0]["bytes"]
    for r in rows:
        r["ratio_vs_dense"] = base / r["bytes"]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "sizes.json"), "w") as f:
        json.dump({"torch": torch.__version__, "rows": rows}, f, indent=2)
    lines = [
        "# Size on disk: LeNet-300-100, Fashion-MNIST, dense vs 92% sparse (iterative pruning)",
        "",
        "| form | bytes | smaller than dense fp32 | test accuracy of what loads back | nonzero params |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['form']} | {r['bytes']:,} | {r['ratio_vs_dense']:.1f}x | {100 * r['accuracy']:.2f}% | {r['nonzeros']:,} |")
    lines += ["", "Goal (issue 5): the compressed int8 sparse file at least 40x smaller than dense fp32. Quantization is",
              "symmetric with one scale per output row; biases stay fp32; the bitmask costs 1 bit per weight before lzma.",
              "Produced by `make bench` (bench/sizes.py)."]
    with open(os.path.join(RESULTS, "sizes.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
