"""Masks from weights, in numpy (so one implementation serves every Keras backend).

Counting follows TF-MOT's ``pruning_impl`` so that a migrated training run prunes the same weights at
the same steps: ``k = max(round(size * (1 - sparsity)), 1)`` groups are kept, computed in float32 with
round-half-to-even as ``tf.math.round`` does, and every group whose score reaches the k-th largest is
kept (ties keep more, never fewer). Scores are ``|w|`` (``"magnitude"``) or seeded uniform noise
(``"random"``); a block's score is the mean (``"AVG"``) or the max (``"MAX"``) of its elements.

Layout (Keras kernels store the output axis last): blocks tile the 2-D view ``(everything else, out)``
of a kernel, so prunekit's ``"block:RxC"`` (R outputs by C inputs) is TF-MOT's ``block_size=(C, R)``;
tiles start at the first row and column and edge tiles are averaged over the elements they hold (TF-MOT
pads its pooling on both sides but expands the mask from the origin, so where a kernel is not a
multiple of the block its edge blocks differ from TF-MOT's). ``"N:M"`` keeps the N best of every M consecutive
weights along the input axis (second to last: Dense ``(in, out)``, Conv ``(kh, kw, in, out)``), as
TF-MOT's ``sparsity_m_by_n=(M - N, M)``; a last partial group keeps its best ``min(N, len)``. As in
TF-MOT, N:M masks are made once, at the first training step, whatever the schedule says.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["sparsity_at", "kept", "scores", "ranked_masks", "nm_mask", "view2d"]

CRITERIA = ("magnitude", "random")


def sparsity_at(schedule, step: int) -> np.float32:
    """The schedule's sparsity at ``step`` in float32, computed in TF-MOT's order of operations (its
    ``PolynomialDecay`` works in float32; a float64 value rounded to float32 differs in the last bit
    at about 45% of steps, enough to move ``kept`` by one weight now and then)."""
    from prunekit.schedules import PolynomialDecay

    if not isinstance(schedule, PolynomialDecay):
        return np.float32(schedule.sparsity_at(step))
    f32 = np.float32
    span = f32(step - schedule.begin_step) / f32(schedule.end_step - schedule.begin_step)
    p = np.minimum(f32(1.0), np.maximum(f32(0.0), span))
    decay = f32(np.float64(f32(1.0) - p) ** float(f32(schedule.power)))  # tf.pow: correctly rounded
    return f32(f32(schedule.initial_sparsity - schedule.final_sparsity) * decay) + f32(schedule.final_sparsity)


def kept(size: int, sparsity: float) -> int:
    """How many of ``size`` groups survive ``sparsity`` (TF-MOT's count, float32 arithmetic)."""
    k = np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity)))
    return int(max(k, 1))


def scores(weight: np.ndarray, criterion: str, seed: int, name: str, step: int) -> np.ndarray:
    """Element scores (higher = keep) for one weight at one update step."""
    if criterion == "magnitude":
        return np.abs(weight.astype(np.float32, copy=False))
    # random: a fresh draw per weight and step, reproducible from (seed, name, step)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), step])
    return rng.random(weight.shape, dtype=np.float32)


def view2d(a: np.ndarray) -> np.ndarray:
    """``(everything else, out)``: the matrix a Keras kernel multiplies (a 1-D weight is one column)."""
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(-1, 1)


def _block_scores(s: np.ndarray, block: tuple[int, int], pooling: str) -> np.ndarray:
    """One score per ``block`` tile of the 2-D view (edge tiles partial), mean or max."""
    m = view2d(s)
    bh, bw = block
    rows, cols = -(-m.shape[0] // bh), -(-m.shape[1] // bw)
    padded = np.full((rows * bh, cols * bw), np.nan, dtype=np.float32)
    padded[: m.shape[0], : m.shape[1]] = m
    tiles = padded.reshape(rows, bh, cols, bw)
    reduce = np.nanmax if pooling == "MAX" else np.nanmean
    return reduce(tiles, axis=(1, 3))


def _expand(keep: np.ndarray, block: tuple[int, int], shape: tuple) -> np.ndarray:
    rows, cols = view2d(np.empty(shape, dtype=np.bool_)).shape
    full = np.repeat(np.repeat(keep, block[0], axis=0), block[1], axis=1)
    return full[:rows, :cols].reshape(shape)


def ranked_masks(
    weights: list[np.ndarray], element_scores: list[np.ndarray], sparsity: float, block: tuple[int, int], pooling: str
) -> list[np.ndarray]:
    """Masks (float 0/1, each its weight's shape) for weights ranked together at one threshold.

    One weight: TF-MOT's per-layer pruning. Several: global ranking (one threshold over all of them).
    """
    if block == (1, 1):
        grouped = list(element_scores)
    else:
        grouped = [_block_scores(s, block, pooling) for s in element_scores]
    flat = np.concatenate([g.reshape(-1) for g in grouped])
    k = kept(flat.size, sparsity)
    threshold = np.partition(flat, flat.size - k)[flat.size - k]  # the k-th largest
    out = []
    for w, g in zip(weights, grouped):
        keep = g >= threshold
        if block != (1, 1):
            keep = _expand(keep, block, w.shape)
        out.append(keep.reshape(w.shape).astype(w.dtype))
    return out


def nm_mask(weight: np.ndarray, element_scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the ``n`` best of every ``m`` consecutive weights along the input axis (ties: the earlier)."""
    s = element_scores if element_scores.ndim >= 2 else element_scores.reshape(-1, 1)
    moved = np.moveaxis(s, -2, -1)  # input axis last
    lead, length = moved.shape[:-1], moved.shape[-1]
    groups = -(-length // m)
    padded = np.full((*lead, groups * m), -np.inf, dtype=np.float32)
    padded[..., :length] = moved
    runs = padded.reshape(-1, m)
    order = np.argsort(-runs, axis=1, kind="stable")[:, :n]
    keep = np.zeros(runs.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    keep &= np.isfinite(runs)
    keep = keep.reshape(*lead, groups * m)[..., :length]
    return np.moveaxis(keep, -1, -2).reshape(weight.shape).astype(weight.dtype)
