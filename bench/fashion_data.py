"""Fashion-MNIST 60k/10k from Debian's ``dataset-fashion-mnist``, as numpy arrays (no framework), so the
PyTorch benches and the Keras / TF-MOT ones read the same pixels."""

from __future__ import annotations

import gzip
import os

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"


def _idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x float32 ``(N, 784)`` standardized, y int64 labels; ``split`` is "train" or "test"."""
    prefix = "train" if split == "train" else "t10k"
    images = os.path.join(DATA, f"{prefix}-images-idx3-ubyte.gz")
    if not os.path.exists(images):
        raise SystemExit(f"{images} not found: apt-get install -y dataset-fashion-mnist (make bench does it)")
    x = _idx(images).reshape(-1, 784).astype(np.float32) / 255.0
    y = _idx(os.path.join(DATA, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    return (x - 0.2860) / 0.3530, y
