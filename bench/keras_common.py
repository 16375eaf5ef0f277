"""What bench/keras_vs_tfmot.py (prunekit.keras, Keras 3) and bench/keras_tfmot.py (TF-MOT 0.8.1, tf_keras) share:
the models, the data, the schedule and the per-step records, written once for both Keras APIs."""

from __future__ import annotations

import gzip
import os
import shutil
import time

import fashion_data
import numpy as np

BATCH = 128
EPOCHS = 2  # of pruning + fine-tuning, after the shared dense pretraining
FREQUENCY = 50
SPARSITIES = (0.8, 0.9)
SEEDS = (0, 1, 2)  # shuffling seeds of the pruning runs; tables report the mean and the spread
MODELS = ("mlp", "cnn")


def data(quick: bool, train: int = 60000):
    (xtr, ytr), (xte, yte) = fashion_data.load("train"), fashion_data.load("test")
    xtr, ytr = xtr[:train], ytr[:train]
    if quick:
        xtr, ytr, xte, yte = xtr[:6000], ytr[:6000], xte[:2000], yte[:2000]
    return xtr, ytr, xte, yte


def shaped(name: str, x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 28, 28, 1) if name == "cnn" else x


def build(k, name: str):
    """LeNet-300-100 or a small CNN, with the Keras module ``k`` (``keras`` 3 or ``tf_keras``)."""
    L = k.layers
    if name == "mlp":
        body = [k.Input((784,)), L.Dense(300, activation="relu"), L.Dense(100, activation="relu"), L.Dense(10)]
    else:
        body = [k.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
                L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(), L.Dense(128, activation="relu"),
                L.Dense(10)]
    return k.Sequential(body, name=name)


def end_step(n_train: int) -> int:
    """The schedule reaches its final sparsity after 1.5 of the 2 epochs."""
    return int(1.5 * (-(-n_train // BATCH)))


def compile_(k, model):
    model.compile(k.optimizers.Adam(1e-3), k.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def recorder(k, masks_of):
    """A callback recording each batch's wall time and, per batch, the zeros of every mask
    (``masks_of(model) -> [array, ...]``) -- the per-step sparsity table."""

    class Record(k.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.zeros, self._t = [], [], 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t)
            if masks_of is not None:
                self.zeros.append([int(np.sum(m == 0)) for m in masks_of(self.model)])

    return Record()


def step_time(times: list[float]) -> float:
    """Median seconds per training step, warm-up (first 20 steps) left out."""
    return float(np.median(times[20:] if len(times) > 40 else times))


def interleaved_step_times(k, dense, pruned, x, y, callbacks, rounds: int = 6, steps: int = 40) -> tuple[float, float]:
    """Median seconds per training step of ``dense`` and ``pruned`` (with ``callbacks``), measured in
    alternating short fits of ``steps`` steps, the first round left out (tracing, warm-up)."""
    dense_rec, pruned_rec = recorder(k, None), recorder(k, None)
    n = steps * BATCH
    for _ in range(rounds):
        dense.fit(x[:n], y[:n], batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[dense_rec])
        pruned.fit(x[:n], y[:n], batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
                   callbacks=[*callbacks, pruned_rec])
    return float(np.median(dense_rec.times[steps:])), float(np.median(pruned_rec.times[steps:]))


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "runs": [float(v) for v in values]}


def gz_size(path: str) -> int:
    """Bytes of ``path`` gzipped (TF-MOT's way of showing what pruning saves on disk)."""
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
        shutil.copyfileobj(f, g)
    return os.path.getsize(path + ".gz")


def pruning_runs(k, tool, fresh, masks_of, s: float, x, y, xt, yt):
    """The protocol both tools follow, through the API names they share (``tool`` is
    ``tfmot.sparsity.keras`` or ``prunekit.keras``): for each seed, wrap ``fresh()`` (the dense model,
    anew) with PolynomialDecay(0 -> s), fit with ``UpdatePruningStep``, strip, evaluate.

    Returns ``(accuracies, (record, pruned, stripped) of the first seed)``."""
    accs, first = [], None
    for seed in SEEDS:
        k.utils.set_random_seed(seed)
        schedule = tool.PolynomialDecay(0.0, s, begin_step=0, end_step=end_step(len(x)), frequency=FREQUENCY)
        pruned = tool.prune_low_magnitude(fresh(), pruning_schedule=schedule)
        compile_(k, pruned)
        record = recorder(k, masks_of)
        pruned.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=True,
                   callbacks=[tool.UpdatePruningStep(), record])
        stripped = tool.strip_pruning(pruned)
        compile_(k, stripped)
        accs.append(float(stripped.evaluate(xt, yt, batch_size=512, verbose=0)[1]))
        first = first or (record, pruned, stripped)
    return accs, first
