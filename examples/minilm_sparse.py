"""A sentence embedder several times faster that still means the same: all-MiniLM-L6-v2, 80-90% sparse.

The recipe, on the real pretrained all-MiniLM-L6-v2 loaded offline:

1. one-shot SparseGPT to 50% from 256 calibration sentences (SparseGPT kept the embeddings closest to
   dense in bench/results/oneshot.md), or start from dense with ``--start dense``;
2. gradual pruning of the encoder's Linear weights to the target (80%, 90%, 2:4, 1x4 blocks) with
   :class:`prunekit.Pruner` and a cubic polynomial-decay schedule, while distilling from the dense
   model: loss = 4 x (1 - cosine) between pruned and dense sentence embeddings + the MSE between their
   hidden states after every layer (each scaled by the dense layer's variance), AdamW;
3. finalize, ``prunekit.deploy.to_sparse_runtime``, and one interleaved timing run against dense
   PyTorch and dense ONNX Runtime at batch 1 x 128 and 8 x 128 tokens, 2 threads.

Corpus (offline, nothing downloaded): training sentences are prose from the docstrings of installed
packages (numpy, scipy, scikit-learn, torch, transformers, ... read with ``ast``; bench/corpus.py);
held-out sentences are the standard library's docstrings (600, the same set as bench/oneshot.py),
and no held-out sentence is trained on.

Run: ``.venv/bin/python examples/minilm_sparse.py`` (about 40 minutes on 2 cores; writes
bench/results/minilm_sparse.{json,md}). ``--quick`` is the reduced version the tests run.
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
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "bench")
sys.path.insert(0, BENCH)
import corpus  # noqa: E402
from oneshot import fidelity, load_minilm  # noqa: E402
from sparse_runtime import TEXT, Encoder  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.deploy import export_onnx, to_sparse_runtime  # noqa: E402

ENCODER = "encoder.*"  # the encoder's Linear layers; embeddings and pooler stay dense
VARIANTS = {"90%": ("unstructured", 0.9), "80%": ("unstructured", 0.8), "2:4": ("2:4", 0.5),
            "1x4 blocks 90%": ("block:1x4", 0.9)}


def encoder_sparsity(model) -> float:
    rows = [r for r in pk.sparsity_report(model).rows if r.name.startswith("encoder.") and len(r.shape) == 2]
    return 1 - sum(r.nonzeros for r in rows) / sum(r.numel for r in rows)


def tokenize(tok, texts, max_length):
    return dict(tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def pooled(model, batch, with_hidden=False):
    out = model(**batch, output_hidden_states=with_hidden)
    h = out.last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    emb = F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    return (emb, out.hidden_states[1:], m) if with_hidden else emb


@torch.no_grad()
def embed(model, batches):
    model.eval()
    return torch.cat([pooled(model, b) for b in batches])


def recover(student, teacher, tok, texts, pattern, sparsity, steps, batch_size, lr, max_length, log_every=50):
    """Prune ``student`` gradually to ``sparsity`` while distilling from ``teacher``; returns the log."""
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    if pattern == "unstructured":
        start = encoder_sparsity(student)
        schedule = pk.schedules.PolynomialDecay(start, sparsity, 0, int(0.6 * steps), power=3,
                                                frequency=max(1, steps // 40))
    else:  # N:M and blocks: the pattern is fixed, the schedule only says when
        schedule = pk.schedules.PolynomialDecay(0.0, sparsity, 0, int(0.6 * steps), power=3,
                                                frequency=max(1, steps // 40))
    pruner = pk.Pruner(student, schedule, pattern=pattern, include=ENCODER, optimizer=opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (0.1 + 0.9 * (1 - s / steps)))
    log, t0 = [], time.perf_counter()
    teacher.eval()
    for step in range(steps):
        i = (step * batch_size) % max(1, len(texts) - batch_size)
        batch = tokenize(tok, texts[i:i + batch_size], max_length)
        with torch.no_grad():
            t_emb, t_h, _ = pooled(teacher, batch, with_hidden=True)
        student.train()
        s_emb, s_h, m = pooled(student, batch, with_hidden=True)
        cos = (s_emb * t_emb).sum(-1)
        # every layer's hidden states, each scaled by the dense layer's variance
        mse = sum((((s - t) ** 2) * m).sum() / (m.sum() * s.shape[-1]) / t.var() for s, t in zip(s_h, t_h)) / len(t_h)
        loss = 4 * (1 - cos).mean() + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        pruner.step()
        if step % log_every == 0 or step == steps - 1:
            log.append({"step": step, "loss": float(loss.detach()), "cos": float(cos.detach().mean()),
                        "sparsity": encoder_sparsity(student),
                        "seconds": time.perf_counter() - t0})
            print(json.dumps(log[-1]), flush=True)
    student.eval()
    return log


def file_size(model, path):
    pk.save(model, path)
    return os.path.getsize(path)


def run(args) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    held_texts = corpus.sentences()[256:256 + args.heldout]
    calib_texts = corpus.sentences()[:256][: args.calibration]
    train_texts = corpus.training_sentences(exclude=held_texts, packages=args.packages)[: args.train_sentences]
    teacher, tok = load_minilm()
    held = [tokenize(tok, held_texts[i:i + 32], 128) for i in range(0, len(held_texts), 32)]
    calib = [tokenize(tok, calib_texts[i:i + 16], 128) for i in range(0, len(calib_texts), 16)]
    dense_emb = embed(teacher, held)
    tmp = tempfile.mkdtemp(prefix="prunekit-minilm-")
    dense_bytes = os.path.getsize(_save_dense(teacher, os.path.join(tmp, "dense.safetensors")))

    start = copy.deepcopy(teacher)
    t0 = time.perf_counter()
    if args.start == "sparsegpt":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pk.recipes.oneshot(start, calib, method="sparsegpt", sparsity=0.5)
    oneshot_s = time.perf_counter() - t0

    rows, models = [], {}
    for name in args.variants:
        pattern, sparsity = VARIANTS[name]
        student = copy.deepcopy(start) if pattern == "unstructured" else copy.deepcopy(teacher)
        baseline = copy.deepcopy(student)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pk.prune(baseline, sparsity, pattern=pattern, include=ENCODER)
        t0 = time.perf_counter()
        log = recover(student, teacher, tok, train_texts, pattern, sparsity, args.steps, args.batch_size, args.lr,
                      args.max_length)
        seconds = time.perf_counter() - t0
        pk.finalize(student)
        row = {"variant": name, "pattern": pattern, "sparsity": encoder_sparsity(student), "recovery_seconds": seconds,
               "steps": args.steps, "file_bytes": file_size(student, os.path.join(tmp, f"{len(rows)}.safetensors")),
               "no_recovery": fidelity(dense_emb, embed(baseline, held)), **fidelity(dense_emb, embed(student, held)),
               "log": log}
        row["file_vs_dense"] = row["file_bytes"] / dense_bytes
        print(json.dumps({k: v for k, v in row.items() if k != "log"}), flush=True)
        rows.append(row)
        models[name] = student
    timing = time_variants(teacher, tok, models, tmp, args)
    return {"torch": torch.__version__, "threads": args.threads, "start": args.start, "oneshot_seconds": oneshot_s,
            "train_sentences": len(train_texts), "heldout_sentences": len(held_texts), "dense_file_bytes": dense_bytes,
            "batch_size": args.batch_size, "lr": args.lr, "rows": rows, **timing,
            "total_seconds": time.perf_counter() - t_all}


def _save_dense(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def time_variants(teacher, tok, models, tmp, args) -> dict:
    enc = tok(TEXT, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    x1 = (enc["input_ids"], enc["attention_mask"])
    x8 = (enc["input_ids"].repeat(8, 1), enc["attention_mask"].repeat(8, 1))
    dense = Encoder(teacher).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort = export_onnx(dense, x1, os.path.join(tmp, "dense.onnx"), input_names=["input_ids", "attention_mask"]).path
    variants = {"dense PyTorch fp32": dense, "dense ONNX Runtime fp32": ort}
    errors, fractions = {}, {}
    for name, model in models.items():
        fast, report = to_sparse_runtime(Encoder(model).eval(), x1, threads=args.threads)
        with torch.no_grad():
            ref = Encoder(model)(*x1)
            errors[name] = float((fast(*x1) - ref).abs().max() / ref.abs().max())
        fractions[name] = report.fraction_sparse
        variants[f"{name}, prunekit runtime"] = fast
    # Shared machines alternate quiet and contended spells, which slow the cache-bound sparse kernels
    # more than dense GEMM: time each batch size in a few repeats and keep the least contended one
    # (fastest dense PyTorch), recording the others.
    repeats = 1 if args.quick else 3
    timed = {}
    for key, x, rounds in (("batch1", x1, args.rounds), ("batch8", x8, max(3, args.rounds // 2))):
        runs = []
        for i in range(repeats):
            if i:
                time.sleep(10)
            runs.append(pk.compare(variants, x, repeats=rounds, threads=args.threads))
            print(runs[-1], flush=True)
        timed[key] = min(runs, key=lambda r: r["dense PyTorch fp32"].median).to_dict()
        timed[f"{key}_repeats"] = [r.to_dict() for r in runs]
    return {**timed, "runtime_rel_err": errors, "fraction_sparse": fractions}


def _ratio(block: dict, name: str) -> float:
    rows = {r["name"]: r["median_ms"] for r in block["variants"]}
    key = f"{name}, prunekit runtime"
    return rows["dense PyTorch fp32"] / rows[key] if key in rows else float("nan")


def markdown(result: dict) -> str:
    def speed(block, name, base):
        rows = {r["name"]: r["median_ms"] for r in result[block]["variants"]}
        return rows[base] / rows[f"{name}, prunekit runtime"]

    mb = result["dense_file_bytes"] / 1e6
    lines = [
        "# all-MiniLM-L6-v2, pruned and distilled: sparse, faster, and still the same embeddings",
        "",
        f"Real pretrained weights; encoder Linear layers pruned gradually with the Pruner (cubic schedule) while "
        f"distilling from the dense model on {result['train_sentences']:,} docstring sentences of installed packages; "
        f"fidelity on {result['heldout_sentences']} held-out standard-library sentences; start: "
        f"{'one-shot SparseGPT 50%' if result['start'] == 'sparsegpt' else 'dense'}. Latency: prunekit's sparse "
        f"runtime vs dense PyTorch fp32 and dense ONNX Runtime fp32, 128 tokens, {result['threads']} threads, "
        "interleaved in one process, medians. File: prunekit.save (fp32 values + bitmask) vs the dense "
        f"safetensors ({mb:.1f} MB).",
        "",
        "| variant | encoder sparsity | cos mean | cos p5 | Spearman | cos mean without recovery | file vs dense | "
        "batch 1: vs PyTorch | vs ONNX Runtime | batch 8: vs PyTorch | vs ONNX Runtime | recovery time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        n = r["variant"]
        lines.append(
            f"| {n} | {r['sparsity']:.1%} | {r['cos_mean']:.3f} | {r['cos_p5']:.3f} | {r['spearman']:.3f} | "
            f"{r['no_recovery']['cos_mean']:.3f} | {r['file_vs_dense']:.2f}x | "
            f"{speed('batch1', n, 'dense PyTorch fp32'):.2f}x | {speed('batch1', n, 'dense ONNX Runtime fp32'):.2f}x | "
            f"{speed('batch8', n, 'dense PyTorch fp32'):.2f}x | {speed('batch8', n, 'dense ONNX Runtime fp32'):.2f}x | "
            f"{r['recovery_seconds'] / 60:.1f} min |")
    b1 = {r["name"]: r["median_ms"] / 1e3 for r in result["batch1"]["variants"]}
    b8 = {r["name"]: r["median_ms"] / 1e3 for r in result["batch8"]["variants"]}
    lines += [
        "",
        f"Dense medians: PyTorch {b1['dense PyTorch fp32'] * 1e3:.1f} ms (batch 1) / {b8['dense PyTorch fp32'] * 1e3:.0f} ms "
        f"(batch 8); ONNX Runtime {b1['dense ONNX Runtime fp32'] * 1e3:.1f} / {b8['dense ONNX Runtime fp32'] * 1e3:.0f} ms. "
        f"Each batch size was timed {len(result.get('batch1_repeats', [1]))} times; the table shows the least contended "
        "run (fastest dense PyTorch); 90% at batch 1 over all runs: " + ", ".join(
            f"{_ratio(r, '90%'):.2f}x" for r in result.get("batch1_repeats", [result["batch1"]])) + ".",
        "Runtime output vs PyTorch on the same weights (max abs error / max abs output): "
        + ", ".join(f"{k}: {v:.1e}" for k, v in result["runtime_rel_err"].items()) + ".",
        f"Each variant: {result['rows'][0]['steps']} steps of {result['batch_size']} sentences, AdamW lr {result['lr']}; "
        f"one-shot start {result['oneshot_seconds']:.0f} s; whole run {result['total_seconds'] / 60:.1f} min on this machine.",
        "Reproduce: `.venv/bin/python examples/minilm_sparse.py`.",
    ]
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--start", choices=["sparsegpt", "dense"], default="sparsegpt")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--train-sentences", type=int, default=60000)
    p.add_argument("--heldout", type=int, default=600)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--packages", nargs="+", default=corpus.TRAIN_PACKAGES)
    p.add_argument("--out", default=os.path.join(BENCH, "results", "minilm_sparse"))
    p.add_argument("--quick", action="store_true", help="the reduced version the tests run (a minute)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.heldout, args.calibration, args.rounds = 12, 8, 48, 32, 3
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
    print(text)
    return result


if __name__ == "__main__":
    main()
