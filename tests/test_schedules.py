"""Schedules against their formulas at edge steps, and their argument checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunekit.schedules import Constant, Geometric, OneShot, PolynomialDecay


def test_oneshot():
    s = OneShot(0.7, at_step=3)
    assert [s.should_update(i) for i in range(5)] == [False, False, False, True, False]
    assert (s.sparsity_at(2), s.sparsity_at(3), s.sparsity_at(100)) == (0.0, 0.7, 0.7)


def test_constant_follows_tf_mot():
    s = Constant(0.5, begin_step=10, end_step=30, frequency=10)
    assert [i for i in range(50) if s.should_update(i)] == [10, 20, 30]
    assert s.sparsity_at(9) == 0.0 and s.sparsity_at(10) == 0.5
    forever = Constant(0.5, begin_step=2, end_step=-1, frequency=3)
    assert [i for i in range(12) if forever.should_update(i)] == [2, 5, 8, 11]
    assert forever.should_update(2 + 3 * 10_000)


def test_polynomial_decay_formula_at_edges():
    s = PolynomialDecay(0.1, 0.9, begin_step=100, end_step=200, power=3, frequency=25)
    assert s.sparsity_at(0) == pytest.approx(0.1) and s.sparsity_at(100) == pytest.approx(0.1)
    assert s.sparsity_at(150) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5**3)
    assert s.sparsity_at(200) == pytest.approx(0.9) and s.sparsity_at(10_000) == pytest.approx(0.9)
    assert [i for i in range(300) if s.should_update(i)] == [100, 125, 150, 175, 200]


@given(
    initial=st.floats(0, 0.5), final=st.floats(0.5, 0.99), begin=st.integers(0, 50), length=st.integers(1, 100),
    power=st.sampled_from([1, 2, 3]), a=st.integers(0, 300), b=st.integers(0, 300),
)
def test_polynomial_decay_is_monotonic_and_bounded(initial, final, begin, length, power, a, b):
    s = PolynomialDecay(initial, final, begin, begin + length, power=power, frequency=1)
    lo, hi = min(a, b), max(a, b)
    assert initial - 1e-12 <= s.sparsity_at(lo) <= s.sparsity_at(hi) <= final + 1e-12


@given(final=st.floats(0.01, 0.99), rounds=st.integers(1, 12), spr=st.integers(1, 5))
def test_geometric_after_round_k(final, rounds, spr):
    s = Geometric(final, rounds, steps_per_round=spr)
    updates = [i for i in range(rounds * spr + 10) if s.should_update(i)]
    assert updates == [k * spr for k in range(rounds)]
    for k in range(1, rounds + 1):
        assert s.sparsity_at((k - 1) * spr) == pytest.approx(1 - (1 - final) ** (k / rounds))
    assert s.sparsity_at(10**6) == pytest.approx(final)
    # each round removes the same fraction of what is left
    left = [1 - s.sparsity_at(k * spr) for k in range(rounds)]
    ratios = [b / a for a, b in zip(left, left[1:])]
    assert all(r == pytest.approx((1 - final) ** (1 / rounds)) for r in ratios)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: PolynomialDecay(0.0, 0.9, 10, 10), ValueError, "begin_step=10 must be before end_step=10"),
        (lambda: PolynomialDecay(0.0, 0.9, 20, 10), ValueError, "before end_step"),
        (lambda: PolynomialDecay(0.8, 0.5, 0, 10), ValueError, "initial_sparsity=0.8 is above final_sparsity"),
        (lambda: PolynomialDecay(0.0, 1.0, 0, 10), ValueError, "final_sparsity=1.0 is outside"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, frequency=0), ValueError, "frequency=0 must be >= 1"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=0), ValueError, "power"),
        (lambda: Constant(-0.1), ValueError, "sparsity=-0.1 is outside"),
        (lambda: Constant(0.5, frequency=-1), ValueError, "frequency"),
        (lambda: Constant(0.5, begin_step=5, end_step=3), ValueError, "end_step=3 is before begin_step=5"),
        (lambda: Geometric(0.9, 0), ValueError, "rounds=0 must be >= 1"),
        (lambda: OneShot("0.5"), TypeError, "sparsity must be a number"),
        (lambda: OneShot(0.5, at_step=-1), ValueError, "at_step=-1"),
    ],
)
def test_bad_schedules_name_the_argument(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_negative_step_is_refused():
    with pytest.raises(ValueError, match="step=-1"):
        OneShot(0.5).sparsity_at(-1)
