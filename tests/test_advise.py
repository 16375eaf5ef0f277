"""advise(): candidates built on copies, measured, sized and scored; Pareto flags and the budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.advise import Candidate, default_candidates
from tests.helpers import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("sparse_kernels")  # advise() loads them (build: see tests/conftest.py)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def pick(*names):
    return [c for c in default_candidates() if c.name in names]


def test_measures_each_candidate_and_leaves_the_model_alone():
    model = mlp()
    before = snapshot(model)
    advice = pk.advise(model, torch.randn(8, 64), budget_s=600, threads=1, repeats=3, progress=False,
                       candidates=pick("structured 50%", "unstructured 90% + sparse runtime", "int8 dynamic (dense)"))
    assert_unchanged(model, before)
    assert sorted(r["name"] for r in advice.rows) == ["int8 dynamic (dense)", "structured 50%",
                                                      "unstructured 90% + sparse runtime"]
    rows = {r["name"]: r for r in advice.rows}
    assert all(r["latency_ms"] > 0 and r["speedup"] > 0 for r in advice.rows)
    assert rows["unstructured 90% + sparse runtime"]["size_ratio"] < 0.3  # bitmask + 10% of the values
    assert rows["structured 50%"]["size_ratio"] < 0.6
    assert advice.quality_kind == "cosine" and advice.dense["quality"] == pytest.approx(1.0)
    assert all(-1 <= r["quality"] <= 1.0 + 1e-6 for r in advice.rows)
    assert {m["scenario"] for m in advice.matrix} >= {"this machine, fastest at acceptable quality",
                                                       "microcontroller / smallest file"}
    assert "speedup" in str(advice) and advice.to_json()


def test_pareto_flags_are_consistent():
    advice = pk.advise(mlp(), torch.randn(4, 64), budget_s=600, threads=1, repeats=3, progress=False,
                       candidates=pick("structured 30%", "structured 50%", "unstructured 70% + sparse runtime"))
    ok = advice.rows
    for r in ok:
        dominated = any(o is not r and o["speedup"] >= r["speedup"] and o["size_ratio"] <= r["size_ratio"]
                        and o["quality"] >= r["quality"] and (o["speedup"], o["size_ratio"], o["quality"])
                        != (r["speedup"], r["size_ratio"], r["quality"]) for o in ok)
        assert r["pareto"] == (not dominated)


def test_eval_fn_is_the_quality():
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    calls = []

    def accuracy(m):
        calls.append(m)
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    advice = pk.advise(mlp(), x[:1], eval_fn=accuracy, budget_s=600, threads=1, repeats=3, progress=False,
                       candidates=pick("structured 30%"))
    assert advice.quality_kind == "eval_fn" and len(calls) == 2
    assert advice.rows[0]["quality"] == accuracy(calls[1])


def test_budget_stops_new_candidates():
    slow = Candidate("slow", "sleep", 0.0, lambda m, x, t: (__import__("time").sleep(0.3) or m, m, "masks"))
    advice = pk.advise(mlp(), torch.randn(2, 64), budget_s=0.5, threads=1, repeats=2, progress=False,
                       candidates=[slow, slow, slow, slow])
    assert len(advice.rows) < 4 and advice.skipped


def test_a_candidate_that_fails_is_reported_not_raised():
    def broken(model, x, threads):
        raise RuntimeError("does not apply")

    advice = pk.advise(mlp(), torch.randn(2, 64), budget_s=60, threads=1, repeats=2, progress=False,
                       candidates=[Candidate("broken", "x", 0.5, broken)])
    assert "does not apply" in advice.rows[0]["error"]


@pytest.mark.parametrize("kwargs, match", [
    ({"budget_s": 0}, "budget_s=0"),
    ({"budget_s": float("nan")}, "budget_s=nan"),
    ({"threads": -1}, "threads=-1 must be a positive int"),
    ({"rounds": 0}, "repeats=0"),
    ({"eval_fn": 3}, "eval_fn must be"),
    ({"candidates": ["int8"]}, "Candidate"),
])
def test_bad_arguments(kwargs, match):
    model = mlp()
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        pk.advise(model, torch.randn(1, 64), progress=False, **kwargs)
    assert_unchanged(model, before)


def test_speedups_agree_with_the_times_shown_and_picks_follow_their_scenario():
    advice = pk.advise(mlp(), torch.randn(8, 64), budget_s=600, threads=1, repeats=3, progress=False,
                       candidates=pick("structured 50%", "unstructured 90% + sparse runtime", "int8 dynamic (dense)"))
    for r in advice.rows:
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["latency_ms"], rel=1e-9)
    matrix = {m["scenario"]: m for m in advice.matrix}
    smallest = min(advice.rows, key=lambda r: r["size_ratio"])
    good = [r for r in advice.rows if r["quality"] >= 0.9]
    expected = min(good, key=lambda r: r["size_ratio"]) if good else smallest
    assert matrix["microcontroller / smallest file"]["method"] == expected["name"]
    faster = [r for r in advice.rows if r["speedup"] > 1.0]
    if faster:
        pool = [r for r in faster if r["quality"] >= 0.9] or faster
        fastest = max(pool, key=lambda r: r["speedup"])
        assert matrix["this machine, fastest at acceptable quality"]["method"] == fastest["name"]


def test_the_kernel_build_is_not_charged_to_the_budget_and_no_folder_is_left(monkeypatch, tmp_path):
    import tempfile
    import time

    import prunekit.deploy.kernels as kernels

    real = kernels.load
    monkeypatch.setattr(kernels, "load", lambda isa=None: (time.sleep(1.0), real(isa))[1])  # a slow first build
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    quick = Candidate("quick", "none", 0.0, lambda m, x, t: (m, m, "masks"))
    advice = pk.advise(mlp(), torch.randn(2, 64), budget_s=0.8, threads=1, repeats=2, progress=False,
                       candidates=[quick, quick])
    assert len(advice.rows) >= 1 and advice.elapsed_s < 1.0
    assert list(tmp_path.iterdir()) == []


def test_global_candidates_do_not_score_a_model_whose_head_was_emptied():
    """On ResNet-50 global 90% ranking took every weight of fc, and advise scored the broken model."""
    model = mlp()
    with torch.no_grad():
        model[4].weight.mul_(1e-4)  # a head whose weights are all small, as default inits often are
    advice = pk.advise(model, torch.randn(8, 64), budget_s=600, threads=1, repeats=2, progress=False,
                       candidates=pick("unstructured 90% + sparse runtime"))
    row = advice.rows[0]
    assert "4" in row["note"].split(" pruned")[0].split(", ") and "note, unstructured 90%" in str(advice)
    assert row["quality"] > 0.0


def test_recovery_rows_beat_their_one_shot_rows_and_keep_the_zeros():
    from prunekit.advise_recovery import recover_candidates

    model = mlp()
    before = snapshot(model)
    x = torch.randn(64, 64)
    pruned = copy_of(model)
    pk.prune(pruned, 0.9)
    pk.finalize(pruned)
    zeros = sum(int((m.weight == 0).sum()) for m in pruned if isinstance(m, nn.Linear))

    def cosine(m):
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(m(x), model(x), dim=1).mean())

    seen = []

    def measure(runnable, saved, kind):
        seen.append(sum(int((m.weight == 0).sum()) for m in saved if isinstance(m, nn.Linear)))
        return {"speedup": 1.5, "quality": cosine(runnable), "size_ratio": 0.2, "latency_ms": 1.0}

    rows = [{"name": "unstructured 90%", "method": "prune 90%", "sparsity": 0.9, "speedup": 2.0,
             "quality": cosine(pruned), "size_ratio": 0.2},
            {"name": "dense-speed", "method": "x", "sparsity": 0.5, "speedup": 0.9, "quality": 0.1, "size_ratio": 1}]
    new = recover_candidates(rows, {"unstructured 90%": (pruned, False), "dense-speed": (pruned, False)}, model,
                             x[:1], [x[i:i + 16] for i in range(0, 64, 16)], 3.0, 0.99, 1, 1, measure)
    assert [r["recovered_from"] for r in new] == ["unstructured 90%"]  # the slower-than-dense one is not recovered
    assert new[0]["quality"] > rows[0]["quality"] and rows[0]["recovered_quality"] == new[0]["quality"]
    assert new[0]["recover_steps"] >= 1 and seen[0] >= zeros  # zeros stay zero through recovery
    assert_unchanged(model, before)


def copy_of(model):
    import copy

    return copy.deepcopy(model)


def test_recover_budget_is_a_duration():
    from prunekit.advise_recovery import parse_duration

    assert parse_duration("20m") == 1200 and parse_duration("90s") == 90 and parse_duration(5) == 5
    with pytest.raises(ValueError, match="--recover 'soon' is not a duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="positive"):
        parse_duration("-1m")
