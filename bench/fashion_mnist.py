"""Fidelity on real data: iterative pruning and lottery tickets on the full Fashion-MNIST.

LeNet-300-100 (784-300-100-10) on Fashion-MNIST 60k/10k (Debian package ``dataset-fashion-mnist``;
``make bench`` installs it). Three experiments, one run:

1. Han et al. 2015 style: dense training, then 92% sparse by iterative pruning with fine-tuning
   (``prunekit.recipes.iterative_pruning``); one-shot 92% without fine-tuning beside it.
2. Lottery ticket (Frankle & Carbin 2019): IMP with rewinding to initialization, 20% of the remaining
   hidden weights per round (10% for the output layer, as the paper does for LeNet), down to ~2% of
   the weights; each round's mask also retrained from a random re-initialization (the control).

Run: ``make bench`` or ``.venv/bin/python bench/fashion_mnist.py [--quick]``. Writes
bench/results/fashion_mnist.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import fashion_data
import torch
from torch import nn

import prunekit as pk
from prunekit.recipes import iterative_pruning, lottery_ticket

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def load(split: str):
    x, y = fashion_data.load(split)
    return torch.from_numpy(x), torch.from_numpy(y)


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def batches(x, y, size, seed):
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[i], y[i]) for i in order.split(size)]


def trainer(x, y, epochs, opt_name, lr, batch, seed=0, teacher=None, temperature=4.0, alpha=0.7):
    """train_fn(model, max_steps=None): fixed data order per epoch, so runs are comparable.

    With ``teacher``, the loss mixes distillation (KL to the teacher's softened outputs) and labels.
    """

    def loss_of(model, xb, yb):
        out = model(xb)
        ce = nn.functional.cross_entropy(out, yb)
        if teacher is None:
            return ce
        with torch.no_grad():
            soft = nn.functional.softmax(teacher(xb) / temperature, dim=1)
        kd = nn.functional.kl_div(nn.functional.log_softmax(out / temperature, dim=1), soft, reduction="batchmean")
        return alpha * kd * temperature**2 + (1 - alpha) * ce

    def train_fn(model, max_steps=None):
        if opt_name == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            sched = None
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
            total = epochs * ((len(y) + batch - 1) // batch)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
        model.train()
        step = 0
        for epoch in range(epochs):
            for xb, yb in batches(x, y, batch, seed + epoch):
                if max_steps is not None and step >= max_steps:
                    return
                loss = loss_of(model, xb, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched:
                    sched.step()
                step += 1
        model.eval()

    return train_fn


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def han(xtr, ytr, xte, yte, quick: bool) -> dict:
    t0 = time.perf_counter()
    dense = lenet()
    trainer(xtr, ytr, 3 if quick else 20, "sgd", 0.05, 128)(dense)
    acc_dense = accuracy(dense, xte, yte)
    t_dense = time.perf_counter() - t0

    oneshot = copy.deepcopy(dense)
    pk.prune(oneshot, 0.92)
    acc_oneshot = accuracy(oneshot, xte, yte)

    runs = {}
    for name, teacher in (("iterative", None), ("iterative_kd", dense.eval())):
        t0 = time.perf_counter()
        model = copy.deepcopy(dense)
        fine_tune = trainer(xtr, ytr, 1 if quick else 3, "sgd", 0.01, 128, seed=100, teacher=teacher)
        hist = iterative_pruning(model, fine_tune, lambda m: accuracy(m, xte, yte), sparsity=0.92, rounds=3 if quick else 8)
        nz = pk.sparsity_report(model).nonzeros
        pk.finalize(model)
        assert pk.sparsity_report(model).nonzeros == nz  # zeros survive finalize
        runs[name] = {"accuracy": hist.final["metric"], "sparsity": hist.final["sparsity"],
                      "seconds": time.perf_counter() - t0, "history": hist.rows}
    return {
        "dense_accuracy": acc_dense, "dense_seconds": t_dense,
        "oneshot_92_accuracy": acc_oneshot,
        "iterative_92_accuracy": runs["iterative"]["accuracy"], "iterative_sparsity": runs["iterative"]["sparsity"],
        "iterative_seconds": runs["iterative"]["seconds"], "iterative_history": runs["iterative"]["history"],
        "iterative_kd_92_accuracy": runs["iterative_kd"]["accuracy"], "iterative_kd_seconds": runs["iterative_kd"]["seconds"],
        "iterative_kd_history": runs["iterative_kd"]["history"],
        "compression": 1 / (1 - runs["iterative"]["sparsity"]),
    }


def lottery(xtr, ytr, xte, yte, quick: bool) -> dict:
    t0 = time.perf_counter()
    rounds = 3 if quick else 18  # 20% of what is left per round, 10% for the output layer (the paper's rates)
    res = lottery_ticket(lenet(), trainer(xtr, ytr, 1 if quick else 8, "adam", 1.2e-3, 60),
                         lambda m: accuracy(m, xte, yte), sparsity=1 - 0.8**rounds, rounds=rounds,
                         output_sparsity=1 - 0.9**rounds, control=True)
    return {"history": res.history.rows, "seconds": time.perf_counter() - t0}


def plot(lt: dict, dense_acc: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = lt["history"]
    rem = [100 * r["remaining"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(rem, [100 * r["metric"] for r in rows], "o-", label="winning ticket (rewind to init)")
    ax.plot(rem[1:], [100 * r["control_metric"] for r in rows[1:]], "s--", label="same masks, random re-init")
    ax.axhline(100 * rows[0]["metric"], color="gray", lw=1, label="dense (Adam, same budget)")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("% of weights remaining (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Lottery ticket, LeNet-300-100, Fashion-MNIST")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(h: dict, lt: dict, quick: bool) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    name = "fashion_mnist_quick" if quick else "fashion_mnist"
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump({"torch": torch.__version__, "quick": quick, "han": h, "lottery": lt}, f, indent=2)
    plot(lt, h["dense_accuracy"], os.path.join(RESULTS, f"{name}.png"))
    rows = lt["history"]
    lines = [
        "# Fashion-MNIST (60k/10k), LeNet-300-100: accuracy kept under pruning",
        "",
        f"torch {torch.__version__}, 2 threads. Produced by `make bench` (bench/fashion_mnist.py).",
        "",
        "## Iterative pruning with fine-tuning (Han et al. 2015 style)",
        "",
        "| model | weights kept | test accuracy | time |",
        "|---|---|---|---|",
        f"| dense (SGD + cosine) | 100% | {100 * h['dense_accuracy']:.2f}% | {h['dense_seconds']:.0f} s |",
        f"| one-shot 92% magnitude, no fine-tuning | 8% | {100 * h['oneshot_92_accuracy']:.2f}% | - |",
        f"| iterative 92% ({len(h['iterative_history']) - 1} rounds, fine-tuned) | {100 * (1 - h['iterative_sparsity']):.1f}% "
        f"({h['compression']:.1f}x fewer) | {100 * h['iterative_92_accuracy']:.2f}% | {h['iterative_seconds']:.0f} s |",
        f"| iterative 92% + distillation from the dense model | 8.0% | {100 * h['iterative_kd_92_accuracy']:.2f}% | "
        f"{h['iterative_kd_seconds']:.0f} s |",
        "",
        f"Iterative 92% vs dense: {100 * (h['iterative_92_accuracy'] - h['dense_accuracy']):+.2f} points "
        f"({100 * (h['iterative_kd_92_accuracy'] - h['dense_accuracy']):+.2f} with distillation); goal: within 0.3.",
        "",
        "Per round (fine-tuning 3 epochs at lr 0.01, SGD + cosine, after each geometric pruning step):",
        "",
        "| round | sparsity | accuracy | with distillation | vs dense |",
        "|---|---|---|---|---|",
        *[f"| {a['round']} | {100 * a['sparsity']:.1f}% | {100 * a['metric']:.2f}% | {100 * b['metric']:.2f}% | "
          f"{100 * (a['metric'] - h['dense_accuracy']):+.2f} |"
          for a, b in zip(h["iterative_history"], h["iterative_kd_history"])],
        "",
        "## Lottery ticket (IMP, rewind to initialization, 20%/round, output layer 10%/round)",
        "",
        f"![accuracy vs weights remaining]({name}.png)",
        "",
        "| round | weights remaining | ticket accuracy | random re-init accuracy |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ctrl = "-" if r["control_metric"] is None else f"{100 * r['control_metric']:.2f}%"
        lines.append(f"| {r['round']} | {100 * r['remaining']:.1f}% | {100 * r['metric']:.2f}% | {ctrl} |")
    lines += ["", f"Total lottery-ticket time: {lt['seconds'] / 60:.1f} min on 2 cores."]
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="few epochs and rounds (a smoke run)")
    parser.add_argument("--part", choices=["all", "iterative", "lottery"], default="all",
                        help="rerun one part and keep the other from the committed JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    xtr, ytr = load("train")
    xte, yte = load("test")
    previous = {}
    path = os.path.join(RESULTS, ("fashion_mnist_quick" if args.quick else "fashion_mnist") + ".json")
    if args.part != "all" and os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    h = han(xtr, ytr, xte, yte, args.quick) if args.part != "lottery" else previous["han"]
    print(f"dense {h['dense_accuracy']:.4f}  one-shot 92% {h['oneshot_92_accuracy']:.4f}  iterative 92% {h['iterative_92_accuracy']:.4f}")
    lt = lottery(xtr, ytr, xte, yte, args.quick) if args.part != "iterative" else previous["lottery"]
    write(h, lt, args.quick)
