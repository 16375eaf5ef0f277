"""Recovery on the real all-MiniLM-L6-v2: how much quality pruning + distillation keeps, and how fast it trains.

Each variant starts from one-shot SparseGPT (50% unstructured, or 2:4) on 256 calibration sentences,
then ``prunekit.recipes.recover`` distils the dense model into it while the sparsity ramps to the
target: loss = 4 x (1 - cosine) between pooled sentence embeddings + the per-block hidden-state MSE,
AdamW. Quality is measured on the 600 held-out standard-library sentences (bench/oneshot.py's set,
never trained on): mean and 5th-percentile cosine to the dense embeddings, during recovery on a
128-sentence subset (the quality-vs-minutes curve) and at the end on all 600.

Training sentences: prose from the docstrings of installed packages (bench/corpus.py), bucketed by
length (each batch holds sentences of similar length, so little of a step is padding), batch order
shuffled with a fixed seed.

Also measured: steps per minute with and without bf16 autocast (interleaved probes of a few steps).

Run: ``.venv/bin/python bench/recover_minilm.py [--variants 80% 2:4] [--steps 600] [--minutes 25]``.
Writes bench/results/recover_minilm.{json,md} (and a quality-vs-minutes PNG when matplotlib is there).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
from oneshot import batches, embed, fidelity, load_minilm  # noqa: E402

import prunekit as pk  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# name: (pattern, one-shot start, final sparsity, criterion inside the ramp)
VARIANTS = {
    "80%": ("unstructured", 0.5, 0.8, "magnitude"),
    "80% sparsegpt ramp": ("unstructured", 0.5, 0.8, "sparsegpt"),
    "90%": ("unstructured", 0.5, 0.9, "magnitude"),
    "2:4": ("2:4", None, None, "magnitude"),
}


def pooled(model, batch):
    h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def bucketed(tok, texts, size, seed=0):
    """Batches of ``size`` sentences of similar token length, in a shuffled order."""
    lengths = [len(tok(t, truncation=True, max_length=128)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    groups = [[texts[i] for i in order[j:j + size]] for j in range(0, len(order) - size + 1, size)]
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    return [dict(tok(groups[i], padding=True, truncation=True, max_length=128, return_tensors="pt")) for i in perm]


def steps_per_minute(teacher, data, autocast, steps=6) -> float:
    student = copy.deepcopy(teacher)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = pk.recipes.recover(student, teacher, data[:steps], sparsity=0.5, steps=steps, outputs=pooled,
                               output_weight=4.0, autocast=autocast, cache_teacher=False, progress=False)
    return r.steps_per_minute


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--minutes", type=float, default=25.0, help="budget per variant")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--autocast", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--out", default="recover_minilm")
    p.add_argument("--no-probe", action="store_true", help="skip the steps/min probes")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    sents = corpus.sentences()
    calib_texts, held_texts = sents[:256], sents[256:856]
    teacher, tok = load_minilm()
    calib, held = batches(tok, calib_texts), batches(tok, held_texts)
    probe = held[:8]  # 128 sentences: the quality curve during recovery
    dense_emb, dense_probe = embed(teacher, held), embed(teacher, probe)
    train = bucketed(tok, corpus.training_sentences(exclude=held_texts), args.batch_size)
    print(f"{len(train)} training batches of {args.batch_size}", flush=True)
    autocast = {"auto": "auto", "on": True, "off": False}[args.autocast]
    rates = {}
    for label, flag in () if args.no_probe else (("fp32", False), ("bf16 autocast", True), ("fp32 ", False),
                                                  ("bf16 autocast ", True)):
        rates.setdefault(label.strip(), []).append(steps_per_minute(teacher, train, flag))
    rates = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    print("steps/min", rates, flush=True)
    rows = []
    for name in args.variants:
        pattern, start, sparsity, criterion = VARIANTS[name]
        student = copy.deepcopy(teacher)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pk.recipes.oneshot(student, calib, method="sparsegpt", sparsity=start, pattern=pattern)
        before = fidelity(dense_emb, embed(student, held))
        curve = []
        t0 = time.perf_counter()

        def score(model):
            f = fidelity(dense_probe, embed(model, probe))
            curve.append({"minutes": (time.perf_counter() - t0) / 60, "cos_mean": f["cos_mean"]})
            print(name, json.dumps(curve[-1]), flush=True)
            return f["cos_mean"]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = pk.recipes.recover(student, teacher, train, sparsity=sparsity, pattern=pattern,
                                        criterion=criterion, steps=args.steps, budget_s=args.minutes * 60,
                                        lr=args.lr, outputs=pooled, output_weight=4.0, hidden_weight=1.0,
                                        eval_fn=score, eval_every=max(1, args.steps // 12), autocast=autocast,
                                        calibration_batches=len(calib) if criterion == "sparsegpt" else 8,
                                        progress=False)
        pk.finalize(student)
        after = fidelity(dense_emb, embed(student, held))
        row = {"variant": name, "pattern": pattern, "start": f"sparsegpt {pattern if start is None else start}",
               "criterion": criterion, "sparsity": result.sparsity, "steps": result.steps,
               "minutes": result.seconds / 60, "steps_per_minute": result.steps_per_minute,
               "one_shot": before, "recovered": after, "curve": curve}
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        rows.append(row)
    write(args, rates, rows, len(train))


def write(args, rates, rows, n_batches) -> None:
    data = {"torch": torch.__version__, "threads": 2, "batch_size": args.batch_size, "lr": args.lr,
            "train_batches": n_batches, "steps_per_minute": rates, "rows": rows}
    with open(os.path.join(RESULTS, f"{args.out}.json"), "w") as f:
        json.dump(data, f, indent=2)
    lines = [
        "# Recovery on all-MiniLM-L6-v2 (prunekit.recipes.recover)",
        "",
        "Real all-MiniLM-L6-v2; one-shot SparseGPT start, then distillation while the sparsity ramps "
        f"(batch {args.batch_size}, AdamW lr {args.lr}, 4 x (1 - cosine) + per-block hidden MSE). Quality: cosine "
        "to the dense embeddings on the 600 held-out sentences. 2 threads on this machine "
        "(bench/recover_minilm.py).",
        "",
        "| variant | criterion in ramp | sparsity | steps | minutes | steps/min | one-shot cos mean / p5 | recovered cos mean / p5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['criterion']} | {r['sparsity']:.1%} | {r['steps']} | {r['minutes']:.1f} | "
                     f"{r['steps_per_minute']:.1f} | {r['one_shot']['cos_mean']:.3f} / {r['one_shot']['cos_p5']:.3f} | "
                     f"{r['recovered']['cos_mean']:.3f} / {r['recovered']['cos_p5']:.3f} |")
    lines += ["", "Training throughput (median of two interleaved probes of 6 steps, no teacher cache): "
              + ", ".join(f"{k} {v:.1f} steps/min" for k, v in rates.items()) + "."]
    with open(os.path.join(RESULTS, f"{args.out}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot([c["minutes"] for c in r["curve"]], [c["cos_mean"] for c in r["curve"]], marker="o", label=r["variant"])
    ax.set_xlabel("recovery minutes (2 cores)")
    ax.set_ylabel("mean cosine to dense (128 held-out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"{args.out}.png"), dpi=100)


if __name__ == "__main__":
    main()
