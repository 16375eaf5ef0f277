"""compare: the ratio follows the real cost, wrong outputs are flagged, threads are restored."""

from __future__ import annotations

import time

import pytest
import torch

from prunekit.bench import compare


def test_slower_variant_gets_a_lower_speedup_and_wrong_output_is_flagged():
    x = torch.ones(4)

    def fast(t):
        return t * 2

    def slow(t):
        time.sleep(0.004)
        return t * 2

    def wrong(t):
        return t * 2 + 0.5

    result = compare({"fast": fast, "slow": slow, "wrong": wrong}, x, repeats=5, warmup=1, min_block_s=0.002)
    assert [r.name for r in result.rows] == ["fast", "slow", "wrong"]
    assert result["fast"].speedup == 1.0
    assert result["slow"].speedup < 0.5
    assert result["slow"].rel_err == 0.0 and result["wrong"].rel_err == pytest.approx(0.25)
    assert len(result["slow"].samples) == 5 and result["slow"].p10 <= result["slow"].median <= result["slow"].p90
    assert "speedup" in str(result) and result.to_dict()["variants"][1]["median_ms"] > 3


def test_threads_are_set_and_restored():
    before = torch.get_num_threads()
    result = compare({"a": lambda t: t + 1}, torch.ones(2), repeats=1, threads=1)
    assert result.threads == 1 and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        compare({"a": lambda t: t}, torch.ones(2), threads=0)
    with pytest.raises(ValueError, match="variants is empty"):
        compare({}, torch.ones(2))


def test_benchmark_reports_deepsparse_percentiles_per_batch_size(tmp_path):
    import json

    from prunekit import benchmark

    model = torch.nn.Linear(16, 4).eval()
    result = benchmark(model, torch.randn(1, 16), batch_sizes=(1, 4), threads=1, min_iters=30, min_time_s=0.05,
                       warmup_s=0.0)
    assert [r["batch"] for r in result.rows] == [1, 4]
    for r in result.rows:
        assert r["iterations"] >= 30
        keys = ["p25_ms", "p50_ms", "p75_ms", "p90_ms", "p95_ms", "p99_ms", "p99.9_ms"]
        values = [r[k] for k in keys]
        assert values == sorted(values) and r["median_ms"] == pytest.approx(r["p50_ms"])
        assert r["items_per_s"] == pytest.approx(r["batch"] / (r["mean_ms"] / 1e3))
    data = json.loads(result.to_json(tmp_path / "b.json"))
    assert data["threads"] == 1 and (tmp_path / "b.json").exists()
    with pytest.raises(ValueError, match="batch_sizes"):
        benchmark(model, torch.randn(1, 16), batch_sizes=(0,))
    with pytest.raises(ValueError, match="not an existing .onnx file"):
        benchmark(str(tmp_path / "missing.onnx"), torch.randn(1, 16))


def test_a_variant_with_another_output_shape_is_refused_not_timed():
    with pytest.raises(ValueError, match="variant 'half' returns shape \\(2,\\) where the baseline"):
        compare({"full": lambda t: t * 2, "half": lambda t: t[:2]}, torch.ones(4), repeats=1)
    with pytest.raises(ValueError, match="variant 'broken' does not run"):
        compare({"ok": lambda t: t, "broken": lambda t: t @ t.T @ torch.ones(3)}, torch.ones(4), repeats=1)
    with pytest.raises(ValueError, match="repeats=0"):
        compare({"a": lambda t: t}, torch.ones(2), repeats=0)
