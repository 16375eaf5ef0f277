"""PruningSummaries, sparsity_report and update_masks outside fit."""

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from tests.keras.helpers import compile_, mlp


def scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, _value(e)) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def _value(event) -> float:
    from tensorboard.util import tensor_util

    return float(tensor_util.make_ndarray(event.tensor_proto))


def test_pruning_summaries_log_each_weights_sparsity(data, tmp_path):
    sched = pk.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=8, frequency=1)
    pruned = compile_(pk.prune_low_magnitude(mlp(), sched))
    pruned.fit(*data, epochs=2, batch_size=32, verbose=0,
               callbacks=[pk.UpdatePruningStep(), pk.PruningSummaries(tmp_path, update_freq="epoch")])
    logged = scalars(tmp_path)
    hidden = [t for t in logged if t.endswith("/sparsity") and "hidden" in t]
    assert len(hidden) == 1
    (step1, s1), (step2, s2) = logged[hidden[0]]
    assert (step1, step2) == (8, 16)
    assert s2 == pytest.approx(pk.sparsity_report(pruned).rows[0].sparsity, abs=1e-6)
    target = logged["pruning/prune_low_magnitude_mlp_hidden/target_sparsity"]
    assert target[-1][1] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="update_freq"):
        pk.PruningSummaries(tmp_path, update_freq=0)


def test_sparsity_report_counts_through_masks_and_changes_nothing():
    pruned = pk.prune_low_magnitude(mlp(), pk.ConstantSparsity(0.5, 0))
    pruned(np.zeros((1, 16), "float32"))
    w = pk.wrappers(pruned)[0]
    w.masks[0].assign(np.zeros(w.masks[0].shape, "float32"))  # a mask not yet applied to the kernel
    before = [a.copy() for a in pruned.get_weights()]
    report = pk.sparsity_report(pruned)
    assert report.rows[0].nonzeros == 0 and report.rows[0].pattern == "unstructured"
    assert all(np.array_equal(a, b) for a, b in zip(before, pruned.get_weights()))
    assert "total" in str(report)
    with pytest.raises(TypeError, match="Keras 3"):
        pk.sparsity_report(object())


def test_update_masks_in_a_custom_loop_and_its_errors():
    sched = pk.ConstantSparsity(0.5, begin_step=1, frequency=2)
    layer = pk.prune_low_magnitude(keras.layers.Dense(4), sched)
    with pytest.raises(ValueError, match="not built"):
        pk.update_masks([layer], 1)
    layer(np.zeros((1, 8), "float32"))
    assert pk.update_masks([layer], 0) == []  # before begin_step
    assert pk.update_masks([layer], 1) == [layer.name]
    assert pk.update_masks([layer], 2) == []  # not a multiple of frequency after begin
    assert np.count_nonzero(keras.ops.convert_to_numpy(layer.layer.kernel)) == 16
    with pytest.raises(ValueError, match="step"):
        pk.update_masks([layer], -1)
    with pytest.raises(ValueError, match="no pruning wrappers"):
        pk.update_masks(mlp(), 0)
