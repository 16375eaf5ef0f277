"""Fuzzing prunekit.keras's public calls: a correct result, or a clear error naming the argument with
the model exactly as it was (CI profile: a bounded number of examples; ``make bench``: thorough)."""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit.keras as pk
from prunekit.keras import _masks
from tests.keras.helpers import same, snapshot

ERRORS = (ValueError, TypeError)
fuzz = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                    st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0, True, "0.5"]))
steps = st.one_of(st.integers(-5, 300), st.sampled_from([-1, 1.5, None, "10"]))
schedules = st.one_of(
    st.sampled_from([("poly", 0.0, 0.8, 0, 100, 10), ("constant", 0.5, 0, -1, 1), ("constant", 0.9, 5, 50, 7)]),
    st.builds(lambda s, b, e, f: ("constant", s, b, e, f), numbers, steps, steps, steps),
    st.builds(lambda i, s, b, e, f: ("poly", i, s, b, e, f), numbers, numbers, steps, steps, steps),
    st.sampled_from([None, "poly", 0.5]),
)
patterns = st.sampled_from([None, "unstructured", "2:4", "1:4", "4:8", "block:1x4", "block:2x2", "3:2", "1:1",
                            "block:0x4", "channel", "", 7])
block_sizes = st.sampled_from([(1, 1), (1, 4), (2, 2), (0, 4), (1,), "1x4", (1.5, 2)])
m_by_ns = st.sampled_from([None, (2, 4), (1, 4), (4, 4), (0, 4), (2,), "2:4"])
criteria = st.sampled_from(["magnitude", "random", "taylor", 3])
scopes = st.sampled_from(["layer", "global", "model"])
filters = st.sampled_from([None, "d*", "out", "nope", ["d1"], lambda layer: layer.name == "d1", 42])


def make_schedule(spec):
    if not isinstance(spec, tuple):
        return spec
    if spec[0] == "constant":
        return pk.ConstantSparsity(spec[1], begin_step=spec[2], end_step=spec[3], frequency=spec[4])
    return pk.PolynomialDecay(spec[1], spec[2], begin_step=spec[3], end_step=spec[4], frequency=spec[5])


def model():
    inp = keras.Input((8,))
    h = keras.layers.Dense(16, name="d1")(inp)
    return keras.Model(inp, keras.layers.Dense(4, name="out")(h))


@fuzz
@given(schedules, patterns, block_sizes, m_by_ns, criteria, scopes, filters, filters, st.integers(0, 300))
def test_prune_low_magnitude_fuzz(spec, pattern, block_size, m_by_n, criterion, scope, include, exclude, step):
    m = model()
    before = snapshot(m)
    try:
        schedule = make_schedule(spec)
        pruned = pk.prune_low_magnitude(m, schedule, block_size=block_size, sparsity_m_by_n=m_by_n, pattern=pattern,
                                        criterion=criterion, scope=scope, include=include, exclude=exclude)
    except ERRORS as e:
        words = ("sparsity", "step", "frequency", "power", "pruning_schedule", "pattern", "block_size",
                 "sparsity_m_by_n", "criterion", "scope", "include", "exclude", "selector", "inputs, outputs")
        assert any(w in str(e) for w in words), f"the error names no argument: {e}"
        assert same(snapshot(m), before)
        return
    assert same(snapshot(m), before)  # success never changes the original either
    ws = pk.wrappers(pruned)
    if not ws:
        with pytest.raises(ValueError, match="no pruning wrappers"):
            pk.update_masks(pruned, step)
        return
    updated = pk.update_masks(pruned, step)
    for w in ws:
        kernel = keras.ops.convert_to_numpy(w.pruned[0])
        mask = keras.ops.convert_to_numpy(w.masks[0])
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert np.all(kernel[mask == 0] == 0)  # what the mask drops is zero in the weight itself
        if w.name not in updated:
            assert mask.min() == 1.0
        elif w.pattern == "unstructured" and w.scope == "layer":
            s = w.pruning_schedule.sparsity_at(step)
            assert int(mask.sum()) >= _masks.kept(mask.size, s)


@fuzz
@given(st.sampled_from([None, "dynamic", "int8", "int4", 1]), st.sampled_from([None, [np.zeros((2, 8), "float32")]]))
def test_to_tflite_fuzz(tmp_path_factory, quantize, batches):
    path = tmp_path_factory.mktemp("tfl") / "m.tflite"
    try:
        size = pk.to_tflite(model(), path, quantize=quantize, representative_data=batches)
    except (*ERRORS, RuntimeError) as e:
        assert str(e)
        assert not path.exists()
        return
    assert path.stat().st_size == size > 0
