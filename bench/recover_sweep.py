"""Why recovery on all-MiniLM-L6-v2 was weak: one factor at a time, the same number of steps each.

Every run prunes a copy of the real all-MiniLM-L6-v2 to 80% (90% where it says so; unstructured, the
encoder's Linear layers) and distils the dense model into it with ``prunekit.recipes.recover`` for the same number of
steps on the same length-bucketed batches (examples/minilm_sparse.py's data and loss: 4 x (1 - cosine)
of pooled embeddings + per-block hidden MSE, bf16 autocast). Runs differ in one thing from the
previous recipe (first row) or from the best row before them: where the sparsity comes from (a
magnitude ramp from one-shot 50%, a SparseGPT ramp, or one-shot SparseGPT straight to 80% and a fixed
mask), the learning rate, the hidden-state loss. Quality: mean / 5th-percentile cosine to the dense
embeddings on the 600 held-out standard-library sentences. Steps are fixed (not a time budget), so
the quality columns do not depend on how busy the machine was; minutes are as measured.

Run: ``.venv/bin/python bench/recover_sweep.py [--steps 360] [--runs NAME ...]``.
Writes bench/results/recover_sweep.{json,md}.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
from oneshot import batches, bucketed, embed, fidelity, load_minilm, pooled  # noqa: E402

import prunekit as pk  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# name: (one-shot SparseGPT start, criterion of the ramp to 80% or None for a fixed mask, recover kwargs)
RUNS = {
    "previous recipe: ramp 50->80% magnitude, lr 1e-4": (0.5, "magnitude", {"lr": 1e-4}),
    "ramp 50->80% sparsegpt, lr 1e-4": (0.5, "sparsegpt", {"lr": 1e-4}),
    "one-shot 80%, fixed mask, lr 1e-4": (0.8, None, {"lr": 1e-4}),
    "one-shot 80%, fixed mask, lr 3e-4": (0.8, None, {"lr": 3e-4}),
    "one-shot 80%, fixed mask, lr 1e-3": (0.8, None, {"lr": 1e-3}),
    "one-shot 80%, fixed mask, lr 3e-4, no hidden loss": (0.8, None, {"lr": 3e-4, "hidden_weight": 0.0}),
    "ramp 50->80% magnitude, lr 3e-4": (0.5, "magnitude", {"lr": 3e-4}),
    "one-shot 80%, fixed mask, lr 3e-3": (0.8, None, {"lr": 3e-3}),
    "ramp 50->80% sparsegpt, lr 1e-3": (0.5, "sparsegpt", {"lr": 1e-3}),
    "one-shot 80%, fixed mask, lr 1e-3, 3x the steps": (0.8, None, {"lr": 1e-3, "steps": 3}),
    "90%: one-shot 90%, fixed mask, lr 1e-3": (0.9, None, {"lr": 1e-3}),
    "90%: ramp 50->90% sparsegpt, lr 1e-3": (0.5, "sparsegpt", {"lr": 1e-3, "target": 0.9}),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=360)
    p.add_argument("--runs", nargs="+", default=list(RUNS))
    p.add_argument("--out", default="recover_sweep")
    p.add_argument("--append", action="store_true", help="add the rows to an existing result (same --steps)")
    args = p.parse_args()
    torch.set_num_threads(2)
    sents = corpus.sentences()
    calib_texts, held_texts = sents[:256], sents[256:856]
    teacher, tok = load_minilm()
    calib, held = batches(tok, calib_texts), batches(tok, held_texts)
    dense_emb = embed(teacher, held)
    train = bucketed(tok, corpus.training_sentences(exclude=held_texts), 32)
    starts = {}
    rows = []
    for name in args.runs:
        start, criterion, kwargs = RUNS[name]
        if start not in starts:
            s = copy.deepcopy(teacher)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pk.recipes.oneshot(s, calib, method="sparsegpt", sparsity=start)
            starts[start] = (s, fidelity(dense_emb, embed(s, held)))
        student, before = copy.deepcopy(starts[start][0]), starts[start][1]
        kwargs = dict(kwargs)
        steps = args.steps * kwargs.pop("steps", 1)  # a multiple of --steps
        target = kwargs.pop("target", 0.8)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = pk.recipes.recover(
                student, teacher, train, sparsity=None if criterion is None else target,
                criterion=criterion or "magnitude", steps=steps, outputs=pooled, output_weight=4.0,
                calibration_batches=len(calib) if criterion == "sparsegpt" else 8, progress=False,
                **{"hidden_weight": 1.0, **kwargs})
        minutes = (time.perf_counter() - t0) / 60
        after = fidelity(dense_emb, embed(student, held))
        row = {"run": name, "steps": result.steps, "minutes": minutes, "sparsity": result.sparsity,
               "start": before, "recovered": after}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.append:
        with open(os.path.join(RESULTS, f"{args.out}.json")) as f:
            old = json.load(f)
        assert old["steps"] == args.steps, "--append needs the --steps of the existing result"
        rows = [r for r in old["rows"] if r["run"] not in args.runs] + rows
    write(args, rows, len(train))


def write(args, rows, n_batches) -> None:
    with open(os.path.join(RESULTS, f"{args.out}.json"), "w") as f:
        json.dump({"torch": torch.__version__, "threads": 2, "batch_size": 32, "steps": args.steps,
                   "train_batches": n_batches, "rows": rows}, f, indent=2)
    lines = [
        "# What moves recovery on all-MiniLM-L6-v2 (bench/recover_sweep.py)",
        "",
        f"{args.steps} steps of batch 32 each unless the run says otherwise (length-bucketed docstring sentences, bf16 autocast, 2 threads); "
        "cosine to the dense embeddings on the 600 held-out sentences.",
        "",
        "| run | sparsity | steps | minutes | at start: cos mean / p5 | recovered: cos mean / p5 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['sparsity']:.1%} | {r['steps']} | {r['minutes']:.1f} | {r['start']['cos_mean']:.3f} / "
                     f"{r['start']['cos_p5']:.3f} | {r['recovered']['cos_mean']:.3f} / {r['recovered']['cos_p5']:.3f} |")
    with open(os.path.join(RESULTS, f"{args.out}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
