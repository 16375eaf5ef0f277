"""The CLI: every command works on a real model, shows an example in --help, and user errors are one
line with exit status 2 (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import prunekit as pk
from prunekit.cli import EXAMPLES, main

FACTORY = '''
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 8))
'''


@pytest.fixture()
def factory(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(FACTORY)
    return f"{path}:tiny"


def test_prune_masks_and_structured(factory, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["prune", factory, "--sparsity", "0.8", "--out", str(out)]) == 0
    from torch import nn

    model = pk.load(out, nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 8)))
    assert pk.sparsity_report(model).sparsity == pytest.approx(0.8, abs=1e-3)
    small = tmp_path / "s.safetensors"
    assert main(["prune", factory, "--structured", "0.5", "--input", "1x32", "--out", str(small)]) == 0
    fresh = pk.structured.load(nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 8)), small)
    assert fresh[0].out_features == 64 and fresh(torch.randn(2, 32)).shape == (2, 8)


def test_prune_2_4_torchvision(tmp_path):
    out = tmp_path / "r.safetensors"
    assert main(["prune", "resnet18", "--pattern", "2:4", "--exclude", "conv1", "--out", str(out)]) == 0
    import torchvision

    model = pk.load(out, torchvision.models.resnet18())
    w = model.layer1[0].conv1.weight.detach().permute(0, 2, 3, 1).reshape(-1, 4)  # groups run along input channels
    assert int((w != 0).sum(1).max()) <= 2


def test_export_and_report_html(factory, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    weights = tmp_path / "m.safetensors"
    main(["prune", factory, "--sparsity", "0.5", "--out", str(weights)])
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", factory, "--weights", str(weights), "--input", "1x32", "--out", str(onnx_path)]) == 0
    assert onnx_path.exists()
    html = tmp_path / "r.html"
    assert main(["report", str(weights), "--model", factory, "--html", str(html)]) == 0
    assert "per-layer sparsity" in html.read_text().lower()


def test_advise_writes_json_and_html(factory, tmp_path, capsys):
    out, html = tmp_path / "a.json", tmp_path / "a.html"
    assert main(["advise", factory, "--input", "4x32", "--budget", "60", "--threads", "1", "--no-progress",
                 "--out", str(out), "--html", str(html)]) == 0
    data = json.loads(out.read_text())
    assert data["rows"] and data["matrix"] and "speedup" in capsys.readouterr().out
    assert main(["report", str(out), "--html", str(tmp_path / "again.html")]) == 0


@pytest.mark.parametrize("argv, message", [
    (["prune", "resnet9000", "--sparsity", "0.5", "--out", "x"], "unknown model 'resnet9000'"),
    (["prune", "resnet18", "--sparsity", "1.5", "--out", "x"], "--sparsity 1.5 is outside"),
    (["prune", "resnet18", "--out", "x"], "give --sparsity"),
    (["advise", "resnet18", "--budget", "0"], "--budget 0.0 must be"),
    (["export", "nofile.py:make", "--out", "x.onnx"], "does not exist"),
    (["report", "missing.safetensors"], "does not exist"),
])
def test_user_errors_are_one_line_exit_2(argv, message):
    done = subprocess.run([sys.executable, "-m", "prunekit.cli", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert EXAMPLES[command].split("\n")[0] in capsys.readouterr().out
