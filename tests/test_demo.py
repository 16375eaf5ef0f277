"""The main job (`prunekit demo`) on a reduced budget, and the CLI around it."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit as pk
from prunekit.cli import main
from prunekit.demo import DemoConfig, SmallCNN, accuracy, load_digits, run

pytestmark = pytest.mark.usefixtures("sparse_kernels")  # the demo runs to_sparse_runtime (build: see tests/conftest.py)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(epochs=2, finetune_epochs=1, limit=1500, out=str(out), repeats=3, progress=False)
    return run(cfg)


@pytest.mark.slow
def test_demo_prunes_to_ninety_percent_and_keeps_accuracy(result):
    dense, pruned, runtime, _ = result["rows"]
    assert runtime["accuracy"] == pytest.approx(pruned["accuracy"], abs=0.002)  # same weights, other kernels
    assert result["weight_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert pruned["nonzeros"] < 0.12 * dense["nonzeros"]
    assert pruned["file_bytes"] < 0.15 * dense["file_bytes"]
    assert dense["accuracy"] > 0.8 and pruned["accuracy"] > dense["accuracy"] - 0.05
    assert pruned["latency_ms"] > 0 and dense["speedup"] == 1.0
    targets = [r["target"] for r in result["pruner_log"]]
    assert len(targets) > 3 and targets == sorted(targets) and targets[-1] == pytest.approx(0.9)


@pytest.mark.slow
def test_demo_shows_a_structurally_pruned_variant_that_reloads(result):
    dense, _, _, channels = result["rows"]
    assert channels["model"] == "channels removed 50%"
    assert channels["params"] < 0.4 * dense["params"] and channels["file_bytes"] < 0.4 * dense["file_bytes"]
    assert channels["accuracy"] > 0.8 and channels["latency_ms"] > 0
    _, _, xte, yte = load_digits(0, 1500)
    model = pk.load(result["paths"]["channels"], SmallCNN())
    assert accuracy(model, xte, yte) == pytest.approx(channels["accuracy"])
    assert sum(p.numel() for p in model.parameters()) == channels["params"]


@pytest.mark.slow
def test_demo_file_reloads_into_a_fresh_model_with_same_accuracy_and_zeros(result):
    _, _, xte, yte = load_digits(0, 1500)
    model = pk.load(result["paths"]["pruned"], SmallCNN())
    assert accuracy(model, xte, yte) == pytest.approx(result["rows"][1]["accuracy"])
    assert pk.sparsity_report(model).model_nonzeros == result["rows"][1]["nonzeros"]


@pytest.mark.slow
def test_cli_report_lists_the_tensors(result, capsys):
    assert main(["report", result["paths"]["pruned"]]) == 0
    out = capsys.readouterr().out
    assert "classifier.1.weight" in out and "bitmask" in out


@pytest.mark.slow
def test_cli_demo_writes_json_and_rejects_bad_sparsity(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["demo", "--epochs", "1", "--finetune-epochs", "0", "--limit", "400", "--no-progress",
                 "--sparsity", "0.5", "--out", str(tmp_path), "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert "pruned 50%" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["demo", "--sparsity", "1.5"]) == 2
    assert "--sparsity 1.5 is outside" in capsys.readouterr().err
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    assert main(["report", str(tmp_path / "plain.safetensors")]) == 2
    assert "not a prunekit file" in capsys.readouterr().err


def test_cli_bench_times_an_onnx_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from prunekit.deploy import export_onnx

    model = torch.nn.Sequential(torch.nn.Linear(16, 4)).eval()
    path = export_onnx(model, torch.randn(1, 16), tmp_path / "m.onnx").path
    out_json = tmp_path / "b.json"
    assert main(["bench", path, "--input", "1x16", "--batch-sizes", "1,4", "--threads", "1", "--min-time", "0.05",
                 "--json", str(out_json)]) == 0
    assert "items/s" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert [r["batch"] for r in data["batches"]] == [1, 4]
    assert main(["bench", "model.pt", "--input", "1x16"]) == 2
    assert "must be an .onnx file" in capsys.readouterr().err
    assert main(["bench", path, "--input", "axb"]) == 2
    assert "not SHAPE" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [({"limit": 0}, "limit=0 must be >= 20"), ({"epochs": -1}, "epochs=-1"),
                                           ({"sparsity": 1.0}, "sparsity=1.0"), ({"lr": 0}, "lr=0")])
def test_demo_config_refuses_what_would_silently_run_something_else(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DemoConfig(**kwargs)
