"""``prunekit.advise`` on the real all-MiniLM-L6-v2 and on ResNet-50, each within a 300 s budget, 2 threads.

MiniLM (batch 1 x 128 tokens): quality = mean cosine between the candidate's and the dense model's
sentence embeddings on 64 held-out standard-library sentences (an ``eval_fn``). ResNet-50 (random
weights, batch 1 x 224 x 224; no pretrained weights offline): quality = cosine of the logits to the
dense model's on the example input, which says only whether the function survived. Every candidate
is one-shot (no fine-tuning): quality here is the floor that recovery starts from.

Run: ``.venv/bin/python bench/advise.py`` (part of ``make bench``). Writes
bench/results/advise_{minilm,resnet50}.{json,md,html}.
"""

from __future__ import annotations

import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import prunekit as pk  # noqa: E402
from prunekit._io import write_text  # noqa: E402
from prunekit.htmlreport import write_report  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BUDGET = 300


def minilm():
    import corpus
    from oneshot import load_minilm

    bert, tok = load_minilm()
    held = corpus.sentences()[256:320]
    batch = dict(tok(held, padding=True, truncation=True, max_length=128, return_tensors="pt"))

    def embed(model):
        with torch.inference_mode():
            out = model(**batch)
            h = out[0] if isinstance(out, tuple) else out.last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    dense = embed(bert)

    def eval_fn(model):
        return float((embed(model) * dense).sum(1).mean())

    example = dict(tok(["Pruning removes weights that matter least; a runtime that skips zeros makes it faster."],
                       padding="max_length", max_length=128, return_tensors="pt"))
    return bert, example, eval_fn


def main() -> None:
    torch.set_num_threads(2)
    os.makedirs(RESULTS, exist_ok=True)
    bert, example, eval_fn = minilm()
    runs = [("minilm", "all-MiniLM-L6-v2 (real), 1 x 128 tokens", bert, example, eval_fn)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs.append(("resnet50", "ResNet-50 (random weights), 1 x 3 x 224 x 224", torchvision.models.resnet50().eval(),
                     torch.randn(1, 3, 224, 224), None))
    for key, title, model, x, fn in runs:
        advice = pk.advise(model, x, eval_fn=fn, budget_s=BUDGET, threads=2, progress=False)
        print(title)
        print(advice, flush=True)
        advice.to_json(os.path.join(RESULTS, f"advise_{key}.json"))
        write_report(advice, os.path.join(RESULTS, f"advise_{key}.html"), title=f"prunekit advise: {title}")
        write_text(os.path.join(RESULTS, f"advise_{key}.md"), markdown(title, advice))


def markdown(title, advice) -> str:
    q = "embedding cosine to dense (eval_fn)" if advice.quality_kind == "eval_fn" else "output cosine to dense"
    lines = [f"# prunekit advise: {title}", "",
             f"{advice.threads} threads, budget {advice.budget_s:.0f} s, took {advice.elapsed_s:.0f} s; quality = {q}; "
             "one-shot candidates (no fine-tuning). Produced by `make bench` (bench/advise.py).", "",
             "Each speedup is dense ms / ms of the same interleaved run.", "",
             "| candidate | ms | dense ms | speedup | file | quality | Pareto |", "|---|---|---|---|---|---|---|",
             f"| dense (median of the runs) | {advice.dense['latency_ms']:.1f} | | 1.00x | 1.00x | "
             f"{advice.dense['quality']:.3f} | |"]
    for r in advice.rows:
        if r.get("error"):
            lines.append(f"| {r['name']} | failed: {r['error'][:80]} | | | | | |")
        else:
            lines.append(f"| {r['name']} | {r['latency_ms']:.1f} | {r['dense_ms']:.1f} | {r['speedup']:.2f}x | "
                         f"{r['size_ratio']:.2f}x | {r['quality']:.3f} | {'yes' if r['pareto'] else ''} |")
    notes = [f"- {r['name']}: {r['note']}" for r in advice.rows if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    if advice.skipped:
        lines += ["", "Not measured within the budget: " + ", ".join(advice.skipped) + "."]
    lines += ["", "| scenario | method | target | measured here |", "|---|---|---|---|"]
    for m in advice.matrix:
        lines.append(f"| {m['scenario']} | {m['method']} | {m['target']} | {m['measured']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
