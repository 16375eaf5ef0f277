"""Deprecated names (kept until prunekit 0.3): each warns, says what replaces it, and does what the new name does."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.deploy import export_onnx, sparse_runtime, to_sparse_runtime
from prunekit.recipes import iterative_pruning, lottery_ticket, oneshot
from tests.recipes.test_oneshot import calibration, llama


def _lottery(**kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    res = lottery_ticket(model, lambda m: None, lambda m: 0.0, rounds=3, progress=False, **kwargs)
    return [{k: v.clone() for k, v in m.items()} for m in res.masks]


def test_lottery_rate_is_the_per_round_form_of_sparsity():
    with pytest.deprecated_call(match=r"lottery_ticket\(rate=...\) is deprecated .* use sparsity="):
        old = _lottery(rate=0.5, output_rate=0.25)
    new = _lottery(sparsity=1 - 0.5**3, output_sparsity=1 - 0.75**3)
    assert len(old) == len(new) == 3
    for a, b in zip(old, new):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TypeError, match="both sparsity= and the deprecated rate="), pytest.deprecated_call():
        _lottery(rate=0.5, sparsity=0.8)


def test_iterative_target_is_sparsity():
    def run(**kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        return iterative_pruning(model, lambda m: None, lambda m: 0.0, rounds=2, progress=False, **kwargs).rows
    with pytest.deprecated_call(match=r"iterative_pruning\(target=...\)"):
        old = run(target=0.75)
    assert [r["sparsity"] for r in old] == [r["sparsity"] for r in run(sparsity=0.75)]
    with pytest.raises(TypeError, match="unexpected keyword argument 'targett'"):
        run(targett=0.75)


def test_oneshot_calibration_is_data():
    a, b = llama(), llama()
    with pytest.deprecated_call(match=r"oneshot\(calibration=...\)"):
        oneshot(a, calibration=calibration(), method="wanda", sparsity=0.5)
    oneshot(b, data=calibration(), method="wanda", sparsity=0.5)
    assert all(torch.equal(x, y) for x, y in zip(pk.masks(a).values(), pk.masks(b).values()))


def test_compare_and_advise_rounds_are_repeats():
    with pytest.deprecated_call(match=r"compare\(rounds=...\)"):
        result = pk.compare({"a": nn.Identity()}, torch.ones(2), rounds=2, min_block_s=0.0)
    assert result.repeats == 2 and len(result["a"].samples) == 2
    with pytest.deprecated_call(match="Comparison.rounds"):
        assert result.rounds == 2
    with pytest.deprecated_call(), pytest.raises(ValueError, match="repeats=0"):
        pk.advise(nn.Linear(4, 4), torch.ones(1, 4), rounds=0)


def test_export_onnx_calibration_is_data(tmp_path):
    pytest.importorskip("onnxruntime")
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.deprecated_call(match=r"export_onnx\(calibration=...\)"):
        info = export_onnx(model, torch.randn(1, 16), tmp_path / "m.onnx", quantize="int8-static",
                           calibration=[torch.randn(4, 16) for _ in range(2)])
    assert (tmp_path / "m.onnx").exists() and info.quantize == "int8-static"


@pytest.mark.usefixtures("sparse_kernels")
def test_sparse_runtime_is_to_sparse_runtime_with_the_report_on_the_model():
    model = nn.Sequential(nn.Linear(32, 32))
    pk.prune(model, 0.9)
    with pytest.deprecated_call(match=r"use fast, report = prunekit.deploy.to_sparse_runtime"):
        old = sparse_runtime(model)
    new, report = to_sparse_runtime(model)
    assert [r["choice"] for r in old.runtime_report.rows] == [r["choice"] for r in report.rows]
    assert not hasattr(new, "runtime_report")  # the new form returns the report instead of sticking it on
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.allclose(old(x), new(x))
