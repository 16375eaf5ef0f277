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

    result = compare({"fast": fast, "slow": slow, "wrong": wrong}, x, rounds=5, warmup=1, min_block_s=0.002)
    assert [r.name for r in result.rows] == ["fast", "slow", "wrong"]
    assert result["fast"].speedup == 1.0
    assert result["slow"].speedup < 0.5
    assert result["slow"].rel_err == 0.0 and result["wrong"].rel_err == pytest.approx(0.25)
    assert len(result["slow"].samples) == 5 and result["slow"].p10 <= result["slow"].median <= result["slow"].p90
    assert "speedup" in str(result) and result.to_dict()["variants"][1]["median_ms"] > 3


def test_threads_are_set_and_restored():
    before = torch.get_num_threads()
    result = compare({"a": lambda t: t + 1}, torch.ones(2), rounds=1, threads=1)
    assert result.threads == 1 and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        compare({"a": lambda t: t}, torch.ones(2), threads=0)
    with pytest.raises(ValueError, match="variants is empty"):
        compare({}, torch.ones(2))
