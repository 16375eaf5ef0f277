"""A sentence embedder several times faster that still means the same: all-MiniLM-L6-v2, pruned and recovered.

The recipe, on the real pretrained all-MiniLM-L6-v2 loaded offline, one call per step:

1. ``prunekit.recipes.oneshot`` prunes a copy with SparseGPT straight to the target (80%, 90%, 2:4)
   on 256 calibration sentences; ``prunekit.recipes.recover`` then trains its weights with the mask
   fixed, distilling the dense model: 4 x (1 - cosine) between pruned and dense sentence embeddings +
   the MSE between their hidden states after every block, AdamW at 1e-3, for a time budget. In
   bench/results/recover_sweep.md this beat the previous recipe (a magnitude ramp from 50% at 1e-4:
   0.664) by the learning rate and the criterion, and a ramp that re-runs SparseGPT at every update
   at equal time. 1x4 blocks, which SparseGPT does not make, ramp by magnitude from dense. ``+ int8``
   variants fake-quantize the last 20% of the steps the way the int8 kernels compute;
2. ``prunekit.deploy.to_sparse_runtime`` (``int8=True`` for the ``+ int8`` variants), then one
   interleaved timing run against dense PyTorch, dense ONNX Runtime fp32 and int8 and PyTorch's
   dynamic int8 at batch 1 x 128 and 8 x 128 tokens, 2 threads. Every timed variant's quality is
   measured on what was timed (the int8 models included), so the chart is the Pareto front itself:
   quality against measured speedup.

Corpus (offline, nothing downloaded): training sentences are prose from the docstrings of installed
packages (numpy, scipy, scikit-learn, torch, transformers, ... read with ``ast``; bench/corpus.py),
batched by length; held-out sentences are the standard library's docstrings (600, the same set as
bench/oneshot.py), and no held-out sentence is trained on.

Run: ``.venv/bin/python examples/minilm_sparse.py [--minutes 12]`` (minutes of recovery per variant;
writes bench/results/minilm_sparse.{json,md,png}). ``--quick`` is the reduced version the tests run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "bench")
sys.path.insert(0, BENCH)
import corpus  # noqa: E402
from oneshot import bucketed, fidelity, load_minilm, pooled  # noqa: E402
from sparse_runtime import TEXT, Encoder  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.deploy import dynamic_int8, export_onnx, to_sparse_runtime  # noqa: E402

# name: (pattern, sparsity, int8)
VARIANTS = {
    "80%": ("unstructured", 0.8, False),
    "90%": ("unstructured", 0.9, False),
    "2:4": ("2:4", None, False),
    "1x4 blocks 90% + int8": ("block:1x4", 0.9, True),
    "80% + int8": ("unstructured", 0.8, True),
    "2:4 + int8": ("2:4", None, True),
}
DENSE = ["dense PyTorch fp32", "dense ONNX Runtime fp32", "dense ONNX Runtime int8", "PyTorch dynamic int8"]


def encoder_sparsity(model) -> float:
    rows = [r for r in pk.sparsity_report(model).rows if r.name.startswith("encoder.") and len(r.shape) == 2]
    return 1 - sum(r.nonzeros for r in rows) / sum(r.numel for r in rows)


def padded(tok, texts, size=32):
    """Held-out batches padded to 128 tokens: the shape every timed variant (ONNX files too) accepts."""
    return [dict(tok(texts[i:i + size], padding="max_length", truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(texts), size)]


@torch.no_grad()
def embed(encode, batches) -> torch.Tensor:
    """Sentence embeddings from ``encode(input_ids, attention_mask) -> last_hidden_state`` (any timed variant)."""
    out = []
    for b in batches:
        h = torch.as_tensor(encode(b["input_ids"], b["attention_mask"])).float()
        m = b["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def onnx_encoder(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda ids, mask: session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]


def recover_variant(teacher, train, calib, pattern, sparsity, int8, args, score):
    """The recipe, in two calls; returns (finalized student, :class:`prunekit.recipes.RecoveryResult`).

    Where SparseGPT makes the pattern (unstructured, 2:4) it prunes first: straight to the target, the
    mask then fixed while ``recover`` trains the weights (``--ramp none``), or to ``--start`` with
    ``recover`` ramping the rest and re-running SparseGPT at each update (``--ramp sparsegpt``). 1x4
    blocks, which SparseGPT does not make, ramp by magnitude from dense.
    """
    student = copy.deepcopy(teacher)
    ramp = "magnitude" if pattern == "block:1x4" else "sparsegpt" if pattern == "unstructured" and args.ramp != "none" \
        else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pattern != "block:1x4":
            pk.recipes.oneshot(student, calib, method="sparsegpt", pattern=pattern,
                               sparsity=None if pattern != "unstructured" else args.start if ramp else sparsity)
        result = pk.recipes.recover(
            student, teacher, train, sparsity=sparsity if ramp else None, pattern=pattern,
            criterion=ramp or "magnitude", steps=args.steps, budget_s=args.minutes * 60, lr=args.lr, outputs=pooled,
            output_weight=4.0, updates=args.updates, quantize="int8" if int8 else None,
            calibration_batches=len(calib), eval_fn=score, eval_every=args.eval_every, progress=False)
    return pk.finalize(student), result


def run(args) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    sents = corpus.sentences()  # the standard library's docstrings, read once
    held_texts, calib_texts = sents[256:256 + args.heldout], sents[:256][: args.calibration]
    teacher, tok = load_minilm()
    train_texts = corpus.training_sentences(exclude=held_texts, packages=args.packages)[: args.train_sentences]
    train = bucketed(tok, train_texts, args.batch_size, max_length=args.max_length)
    held = padded(tok, held_texts)
    probe = held[:4]  # 128 sentences: the quality-vs-minutes curve during recovery
    calib = [dict(tok(calib_texts[i:i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt"))
             for i in range(0, len(calib_texts), 16)]
    dense = Encoder(teacher).eval()
    dense_emb, dense_probe = embed(dense, held), embed(dense, probe)
    tmp = tempfile.mkdtemp(prefix="prunekit-minilm-")
    rows, models = [], {}
    for name in args.variants:
        pattern, sparsity, int8 = VARIANTS[name]
        curve, t0 = [], time.perf_counter()

        def score(model, curve=curve, t0=t0, name=name):
            cos = fidelity(dense_probe, embed(Encoder(model).eval(), probe))["cos_mean"]
            curve.append({"minutes": (time.perf_counter() - t0) / 60, "cos_mean": cos})
            print(name, json.dumps(curve[-1]), flush=True)
            return cos

        student, result = recover_variant(teacher, train, calib, pattern, sparsity, int8, args, score)
        row = {"variant": name, "pattern": pattern, "int8": int8, "sparsity": encoder_sparsity(student),
               "steps": result.steps, "recovery_minutes": (time.perf_counter() - t0) / 60,
               "steps_per_minute": result.steps_per_minute, "curve": curve,
               "file_bytes": _file_size(student, os.path.join(tmp, f"{len(rows)}.safetensors"))}
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        rows.append(row)
        models[name] = student
    timing = time_variants(dense, tok, models, rows, held, dense_emb, tmp, args)
    dense_bytes = os.path.getsize(_save_dense(teacher, os.path.join(tmp, "dense.safetensors")))
    for r in rows:
        r["file_vs_dense"] = r["file_bytes"] / dense_bytes
    return {"torch": torch.__version__, "threads": args.threads, "train_sentences": len(train_texts),
            "heldout_sentences": len(held_texts), "dense_file_bytes": dense_bytes, "batch_size": args.batch_size,
            "lr": args.lr, "minutes": args.minutes, "ramp": args.ramp, "start": args.start, "updates": args.updates,
            "rows": rows, **timing,
            "total_minutes": (time.perf_counter() - t_all) / 60}


def _file_size(model, path):
    pk.save(model, path)
    return os.path.getsize(path)


def _save_dense(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def time_variants(dense, tok, models, rows, held, dense_emb, tmp, args) -> dict:
    """Build every deployable variant, score each on the held-out set as built, time all in one interleaved run."""
    enc = tok(TEXT, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    x1 = (enc["input_ids"], enc["attention_mask"])
    x8 = (enc["input_ids"].repeat(8, 1), enc["attention_mask"].repeat(8, 1))
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort32 = export_onnx(dense, x1, os.path.join(tmp, "dense.onnx"), input_names=names).path
        ort8 = export_onnx(dense, x1, os.path.join(tmp, "dense-int8.onnx"), quantize="int8", input_names=names).path
    variants = {DENSE[0]: dense, DENSE[1]: ort32, DENSE[2]: ort8, DENSE[3]: dynamic_int8(dense)}
    encoders = {DENSE[0]: dense, DENSE[1]: onnx_encoder(ort32), DENSE[2]: onnx_encoder(ort8), DENSE[3]: variants[DENSE[3]]}
    fractions = {}
    for r in rows:
        fast, report = to_sparse_runtime(Encoder(models[r["variant"]]).eval(), x1, threads=args.threads, int8=r["int8"])
        fractions[r["variant"]] = report.fraction_sparse
        variants[r["variant"]] = encoders[r["variant"]] = fast
    quality = {n: fidelity(dense_emb, embed(e, held)) for n, e in encoders.items()}
    for r in rows:
        r.update(quality[r["variant"]])
    # Shared machines alternate quiet and contended spells, which slow the cache-bound sparse kernels more
    # than dense GEMM: time each batch size a few times and keep the least contended (fastest dense PyTorch).
    timed = {}
    for key, x, rounds in (("batch1", x1, args.rounds), ("batch8", x8, max(3, args.rounds // 2))):
        runs = []
        for i in range(args.timing_repeats):
            if i:
                time.sleep(10)
            runs.append(pk.compare(variants, x, repeats=rounds, threads=args.threads))
            print(runs[-1], flush=True)
        timed[key] = min(runs, key=lambda c: c[DENSE[0]].median).to_dict()
        timed[f"{key}_repeats"] = [c.to_dict() for c in runs]
    return {**timed, "quality": quality, "fraction_sparse": fractions}


def speedups(result: dict, block: str = "batch1") -> dict:
    ms = {r["name"]: r["median_ms"] for r in result[block]["variants"]}
    return {n: ms[DENSE[0]] / v for n, v in ms.items()}


def markdown(result: dict) -> str:
    b1, b8 = speedups(result, "batch1"), speedups(result, "batch8")
    ort8 = b1[DENSE[2]]
    q = result["quality"]
    lines = [
        "# all-MiniLM-L6-v2, pruned and recovered: quality against measured speed",
        "",
        "Real pretrained weights. Each variant: one-shot SparseGPT "
        + ("to the target sparsity (2:4: its pattern), then `prunekit.recipes.recover` with the mask fixed"
           if result["ramp"] == "none" else
           f"to {result['start']:.0%} (2:4: its pattern), then `prunekit.recipes.recover` ramping to the target "
           f"with SparseGPT re-run at {result['updates']} mask updates")
        + f", at most {result['minutes']:g} minutes (1x4 blocks: a magnitude ramp from dense; `+ int8`: int8 "
        "fake-quantized for the last 20% of the steps), distilling the dense model on "
        f"{result['train_sentences']:,} docstring sentences of installed packages (batch {result['batch_size']}, AdamW "
        f"lr {result['lr']}, 4 x (1 - cosine) + per-block hidden MSE, bf16 autocast). Quality: cosine of each "
        f"variant's sentence embeddings, as deployed, to the dense model's on {result['heldout_sentences']} held-out "
        "standard-library sentences. Speed: batch 1 x 128 and 8 x 128 tokens, 2 threads, every variant interleaved "
        "in one process (`prunekit.compare`), medians, vs dense PyTorch fp32.",
        "",
        "| variant | encoder sparsity | cos mean | cos p5 | Spearman | batch 1 speedup | vs ONNX Runtime int8 | "
        "batch 8 speedup | file vs dense | recovery | steps/min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in DENSE:
        lines.append(f"| {n} | - | {q[n]['cos_mean']:.3f} | {q[n]['cos_p5']:.3f} | {q[n]['spearman']:.3f} | "
                     f"{b1[n]:.2f}x | {b1[n] / ort8:.2f}x | {b8[n]:.2f}x | - | - | - |")
    for r in result["rows"]:
        n = r["variant"]
        lines.append(
            f"| {n} | {r['sparsity']:.1%} | {r['cos_mean']:.3f} | {r['cos_p5']:.3f} | {r['spearman']:.3f} | "
            f"{b1[n]:.2f}x | {b1[n] / ort8:.2f}x | {b8[n]:.2f}x | {r['file_vs_dense']:.2f}x | "
            f"{r['steps']} steps, {r['recovery_minutes']:.1f} min | {r['steps_per_minute']:.0f} |")
    good = [n for n in b1 if q[n]["cos_mean"] >= 0.95 and q[n]["cos_p5"] >= 0.90 and n != DENSE[0]]
    best = max(good, key=b1.get, default=None)
    ms = {r["name"]: r["median_ms"] for r in result["batch1"]["variants"]}
    lines += [
        "",
        (f"Fastest variant at cosine >= 0.95 (p5 >= 0.90): {best}, {b1[best]:.2f}x dense PyTorch." if best else
         "No variant reaches cosine >= 0.95 with p5 >= 0.90."),
        f"Dense PyTorch: {ms[DENSE[0]]:.1f} ms at batch 1. Each batch size was timed "
        f"{len(result['batch1_repeats'])} times; the table shows the least contended run (fastest dense PyTorch). "
        f"Whole run {result['total_minutes']:.0f} min on this machine (2 cores).",
        "Reproduce: `.venv/bin/python examples/minilm_sparse.py` (chart: minilm_sparse.png).",
    ]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    b1, q = speedups(result), result["quality"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, s in b1.items():
        ax.scatter(s, q[n]["cos_mean"], color="tab:gray" if n in DENSE else "tab:blue")
        ax.annotate(n, (s, q[n]["cos_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.95, color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel("speedup vs dense PyTorch (batch 1 x 128, 2 threads)")
    ax.set_ylabel("mean cosine to dense (600 held-out)")
    ax.set_title("quality vs measured speed")
    for r in result["rows"]:
        bx.plot([c["minutes"] for c in r["curve"]], [c["cos_mean"] for c in r["curve"]], marker=".", label=r["variant"])
    bx.set_xlabel("recovery minutes (2 cores)")
    bx.set_ylabel("mean cosine (128 held-out, fp32)")
    bx.set_title("quality during recovery")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--minutes", type=float, default=10.0, help="recovery budget per variant")
    p.add_argument("--steps", type=int, default=100_000, help="at most this many steps per variant")
    p.add_argument("--ramp", choices=["none", "sparsegpt"], default="none",
                   help="unstructured: one-shot SparseGPT to the target and a fixed mask, or a SparseGPT ramp")
    p.add_argument("--start", type=float, default=0.5, help="with --ramp sparsegpt: the one-shot start")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--updates", type=int, default=20, help="mask updates on the sparsity ramp")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--train-sentences", type=int, default=60000)
    p.add_argument("--heldout", type=int, default=600)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--timing-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--packages", nargs="+", default=corpus.TRAIN_PACKAGES)
    p.add_argument("--out", default=os.path.join(BENCH, "results", "minilm_sparse"))
    p.add_argument("--quick", action="store_true", help="the reduced version the tests run (a minute or two)")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.steps, args.batch_size, args.heldout, args.calibration = 5.0, 12, 8, 64, 32
        args.rounds, args.timing_repeats, args.eval_every, args.updates = 3, 1, 6, 2
        args.train_sentences, args.packages = 400, ["yaml", "tqdm"]
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    result = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    chart(result, args.out + ".png")
    print(text)
    return result


if __name__ == "__main__":
    main()
