"""prunekit.keras._masks: counts as TF-MOT counts, groups as the patterns say (properties over shapes)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunekit.keras import _masks

sparsities = st.floats(0.0, 0.99)


def distinct(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float32) + 1.0


def test_kept_is_tfmot_float32_count():
    # size * (1 - s) in float32, rounded half to even, at least one
    assert _masks.kept(10, 0.25) == 8  # 7.5 -> 8
    assert _masks.kept(10, 0.35) == 6  # 6.5 -> 6 (half to even)
    assert _masks.kept(3, 0.99) == 1
    assert _masks.kept(1000, 0.8) == int(np.round(np.float32(1000) * (np.float32(1) - np.float32(0.8))))


@given(st.integers(1, 40), st.integers(1, 40), sparsities, st.integers(0, 99))
def test_unstructured_keeps_exactly_k_of_the_largest(rows, cols, s, seed):
    w = distinct((rows, cols), seed)
    (mask,) = _masks.ranked_masks([w], [np.abs(w)], s, (1, 1), "AVG")
    k = _masks.kept(w.size, s)
    assert int(mask.sum()) == k
    assert w[mask == 1].min() > (w[mask == 0].max() if k < w.size else -1)


@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 4), st.integers(1, 4), sparsities, st.integers(0, 99))
def test_blocks_are_whole_and_counted(rows, cols, bh, bw, s, seed):
    w = distinct((rows, cols), seed)
    (mask,) = _masks.ranked_masks([w], [np.abs(w)], s, (bh, bw), "AVG")
    tiles = -(-rows // bh) * -(-cols // bw)
    kept_tiles = 0
    for i in range(0, rows, bh):
        for j in range(0, cols, bw):
            tile = mask[i:i + bh, j:j + bw]
            assert tile.min() == tile.max(), "a block is kept or pruned whole"
            kept_tiles += int(tile.max())
    assert kept_tiles >= _masks.kept(tiles, s)  # ties between block means may keep more, never fewer
    if bh == bw == 1:
        assert kept_tiles == _masks.kept(tiles, s)


@given(st.integers(1, 5), st.integers(1, 17), st.integers(1, 6), st.integers(2, 8), st.integers(0, 99))
def test_nm_keeps_the_n_best_of_every_m_along_the_input_axis(kh, cin, cout, m, seed):
    n = max(1, m // 2)
    w = distinct((kh, cin, cout), seed)  # Conv1D-like kernel: input axis is -2
    mask = _masks.nm_mask(w, np.abs(w), n, m)
    for a in range(kh):
        for o in range(cout):
            col, keep = w[a, :, o], mask[a, :, o]
            for start in range(0, cin, m):
                group, kg = col[start:start + m], keep[start:start + m]
                assert int(kg.sum()) == min(n, group.size)
                assert set(np.argsort(-group)[: min(n, group.size)]) == set(np.flatnonzero(kg))


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)), min_size=2, max_size=4), sparsities, st.integers(0, 9))
def test_global_ranking_uses_one_threshold(shapes, s, seed):
    ws = [distinct(shape, seed + i) * (i + 1) for i, shape in enumerate(shapes)]
    masks = _masks.ranked_masks(ws, [np.abs(w) for w in ws], s, (1, 1), "AVG")
    kept_vals = np.concatenate([w[m == 1] for w, m in zip(ws, masks)])
    pruned_vals = np.concatenate([w[m == 0] for w, m in zip(ws, masks)])
    assert kept_vals.size >= _masks.kept(sum(w.size for w in ws), s)
    if pruned_vals.size:
        assert kept_vals.min() >= pruned_vals.max()


def test_random_scores_are_reproducible_and_differ_by_step():
    w = np.ones((4, 4), np.float32)
    a = _masks.scores(w, "random", 0, "k", 3)
    assert np.array_equal(a, _masks.scores(w, "random", 0, "k", 3))
    assert not np.array_equal(a, _masks.scores(w, "random", 0, "k", 4))


def test_polynomial_decay_float32_matches_tfmots_arithmetic():
    tf = pytest.importorskip("tensorflow")
    from prunekit.schedules import PolynomialDecay

    def tfmot(s, step):  # TF-MOT 0.8.1 pruning_schedule.PolynomialDecay.__call__, its sparsity half
        p = tf.math.minimum(1.0, tf.math.maximum(0.0, tf.math.divide(
            tf.cast(step - s.begin_step, tf.float32), s.end_step - s.begin_step)))
        sparsity = tf.math.add(tf.math.multiply(s.initial_sparsity - s.final_sparsity, tf.math.pow(1 - p, s.power)),
                               s.final_sparsity)
        return np.float32(sparsity.numpy())

    for s in (PolynomialDecay(0.0, 0.9, 0, 703), PolynomialDecay(0.1, 0.95, 10, 1000, power=2),
              PolynomialDecay(0.2, 0.7, 5, 50, power=1.5)):
        got = [_masks.sparsity_at(s, step) for step in range(s.end_step + 3)]
        want = [tfmot(s, step) for step in range(s.end_step + 3)]
        assert got == want
