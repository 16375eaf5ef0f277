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
    assert main(["prune", factory, "--structured", "--sparsity", "0.5", "--input", "1x32", "--out", str(small)]) == 0
    fresh = pk.load(small, nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 8)))
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


@pytest.mark.usefixtures("sparse_kernels")
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


BROKEN = '''
import torch
from torch import nn

def raises():
    raise RuntimeError("no weights here")

def not_a_module():
    return {"weight": torch.ones(2)}

syntax = 1
'''


@pytest.fixture()
def hf_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1,
                                                           num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(tmp_path / "bert")
    return str(tmp_path / "bert")


def _user_error(argv, capsys, words):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
    return err[0]


def test_user_mistakes_are_one_line_exit_2_and_write_nothing(factory, tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("schedule: {type: OneShot\n  sparsity: [0.5\n")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx" * 10)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    torch.save({"w": torch.ones(1)}, pickled / "pytorch_model.bin")  # a pickle: must never be loaded
    weights = tmp_path / "m.safetensors"
    assert main(["prune", factory, "--sparsity", "0.5", "--out", str(weights)]) == 0
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", factory, "--input", "1x32", "--out", str(onnx_path)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    folder = str(tmp_path)
    cases = [
        (["prune", factory, "--sparsity", "0.5", "--out", folder], "is a folder"),
        (["bench", str(onnx_path), "--input", "1x32", "--json", folder], "is a folder"),
        (["report", str(tmp_path / "a.json"), "--html", folder], "does not exist"),
        (["advise", factory, "--input", "1x32", "--html", folder], "is a folder"),
        (["export", factory, "--weights", folder, "--input", "1x32", "--out", str(tmp_path / "x.onnx")], "is a folder"),
        (["prune", factory, "--recipe", folder, "--out", str(tmp_path / "r.pk")], "is a folder"),
        (["prune", factory, "--recipe", str(bad_yaml), "--out", str(tmp_path / "r.pk")], "not valid YAML at line 2"),
        (["export", factory, "--input", "1x31", "--out", str(tmp_path / "x.onnx")], "does not run on --input 1x31"),
        (["advise", factory, "--input", "3x7", "--budget", "5"], "does not run on --input 3x7"),
        (["bench", str(garbage), "--input", "1x32"], "not an ONNX model"),
        (["bench", str(onnx_path), "--input", "1x31"], "does not run on example_inputs"),
        (["prune", f"{broken}:raises", "--sparsity", "0.5", "--out", str(tmp_path / "r.pk")], "raised RuntimeError"),
        (["prune", f"{broken}:not_a_module", "--sparsity", "0.5", "--out", str(tmp_path / "r.pk")], "not a torch.nn.Module"),
        (["prune", f"{broken}:syntax", "--sparsity", "0.5", "--out", str(tmp_path / "r.pk")], "is a int, not a function"),
        (["prune", f"{broken}:absent", "--sparsity", "0.5", "--out", str(tmp_path / "r.pk")], "has no function"),
        (["prune", factory, "--structured", "0.5", "--quantize", "int8", "--sparsity", "0.5", "--out",
          str(tmp_path / "r.pk")], "give the fraction once"),
        (["prune", factory, "--structured", "--pattern", "2:4", "--sparsity", "0.5", "--out",
          str(tmp_path / "r.pk")], "does not take --pattern"),
        (["prune", factory, "--structured", "--out", str(tmp_path / "r.pk")], "--structured --sparsity 0.5"),
        (["prune", factory, "--sparsity", "0.5", "--round-to", "8", "--out", str(tmp_path / "r.pk")],
         "--round-to applies to --structured"),
        (["prune", factory, "--sparsity", "0.5", "--input", "foo", "--out", str(tmp_path / "r.pk")], "--input 'foo'"),
        (["prune", factory, "--sparsity", "0.5", "--input", "1x3", "--out", str(tmp_path / "r.pk")],
         "does not run on --input 1x3"),
        (["prune", factory, "--sparsity", "0.5", "--out", str(tmp_path / "r.onnx")], "prune writes a prunekit file"),
        (["export", factory, "--input", "1x32", "--out", str(tmp_path / "x.safetensors")], "name the file *.onnx"),
        (["prune", str(pickled), "--sparsity", "0.5", "--out", str(tmp_path / "r.pk")], "never loads pickled"),
        (["export", factory, "--weights", str(onnx_path), "--input", "1x32", "--out", str(tmp_path / "x.onnx")],
         "not a prunekit file"),
        (["bench", str(onnx_path), "--input", "1x32", "--batch-sizes", "a"], "--batch-sizes 'a'"),
        (["demo", "--limit", "0"], "--limit 0 is too few"),
        (["demo", "--epochs", "-1"], "--epochs -1 must be >= 1"),
        (["advise", factory, "--input", "1x32", "--threads", "-1"], "--threads -1 must be at least 1"),
        (["advise", factory, "--input", "1x32", "--budget", "nan"], "--budget nan must be"),
        (["advise", factory, "--input", "1x32", "--out", str(tmp_path / "no" / "a.json")], "does not exist; create it"),
        (["report", str(garbage)], "not a prunekit file"),
    ]
    for argv, words in cases:
        _user_error(argv, capsys, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left behind


def test_every_command_takes_what_the_others_write(factory, tmp_path, capsys):
    small = tmp_path / "small.safetensors"
    assert main(["prune", factory, "--structured", "--sparsity", "0.5", "--input", "1x32", "--out", str(small)]) == 0
    assert main(["report", str(small)]) == 0
    out = capsys.readouterr().out
    assert "structurally pruned" in out and "0.weight" in out and "64x32" in out
    onnx_small = tmp_path / "small.onnx"
    assert main(["export", factory, "--weights", str(small), "--input", "1x32", "--out", str(onnx_small)]) == 0
    assert main(["bench", str(onnx_small), "--input", "1x32", "--min-time", "0.05"]) == 0
    small_q = tmp_path / "small_q.pk"  # --structured with --quantize: smaller and int8
    assert main(["prune", factory, "--structured", "--sparsity", "0.5", "--quantize", "int8", "--input", "1x32",
                 "--out", str(small_q)]) == 0
    capsys.readouterr()
    assert main(["report", str(small_q)]) == 0
    out = capsys.readouterr().out
    assert "structurally pruned" in out and ("dense+int8" in out or "bitmask+int8" in out)
    assert main(["bench", str(onnx_small), "--min-time", "0.05"]) == 0  # inputs from the graph itself
    assert "inputs from the graph: --input input_0=1x32:float32" in capsys.readouterr().err
    quantized = tmp_path / "q.pk"
    assert main(["prune", factory, "--sparsity", "0.9", "--quantize", "int8", "--out", str(quantized)]) == 0
    capsys.readouterr()
    assert main(["report", str(quantized)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("0.weight"))
    from torch import nn

    loaded = pk.load(quantized, nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 8)))
    expected = pk.sparsity_report(loaded)["0.weight"]
    assert "bitmask+int8" in row and f"{expected.nonzeros:,}" in row and f"{expected.sparsity:.2%}" in row
    assert main(["export", factory, "--weights", str(quantized), "--input", "1x32", "--out", str(tmp_path / "q.onnx")]) == 0
    for schedule in ("{type: OneShot, sparsity: 0.6}", "{type: Constant, sparsity: 0.6, begin_step: 0}",
                     "{type: PolynomialDecay, initial_sparsity: 0.1, final_sparsity: 0.6, begin_step: 0, end_step: 9}"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"schedule: {schedule}\n")
        assert main(["prune", factory, "--recipe", str(recipe), "--out", str(tmp_path / "r.pk")]) == 0
        model = pk.load(tmp_path / "r.pk", nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 8)))
        assert pk.sparsity_report(model).sparsity == pytest.approx(0.6, abs=1e-3)


def test_hugging_face_folder_exports_and_is_scored_on_real_tokens(hf_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from prunekit.cli import load_model

    model, inputs = load_model(hf_folder)
    assert "inputs:" in capsys.readouterr().err
    ids = inputs["input_ids"]
    assert ids.shape == (1, 128) and len(set(ids.flatten().tolist())) > 20  # not 128 copies of one id
    out = tmp_path / "bert.onnx"
    assert main(["export", hf_folder, "--out", str(out)]) == 0
    assert out.exists()


@pytest.mark.usefixtures("sparse_kernels")
def test_saved_masks_keep_their_pattern_and_small_conveniences(factory, tmp_path, capsys):
    out = tmp_path / "m.pk"
    assert main(["prune", factory, "--pattern", "2:4", "--scope", "layer", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("0.weight"))
    assert "2:4" in row and "50.00%" in row  # the file keeps the masks, so the pattern is known
    recipe = tmp_path / "r.yaml"
    recipe.write_text("schedule: {type: OneShot, sparsity: 0.9}\n")
    assert main(["prune", factory, "--recipe", str(recipe), "--sparsity", "0.5", "--out", str(out)]) == 0
    assert "--sparsity 0.5 overrides the recipe's sparsity" in capsys.readouterr().err
    advice = tmp_path / "a.json"
    assert main(["advise", factory, "--input", "2x32", "--budget", "20", "--threads", "1", "--no-progress",
                 "--out", str(advice)]) == 0
    capsys.readouterr()
    assert main(["report", str(advice)]) == 0  # the table, without --html
    assert "speedup" in capsys.readouterr().out


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """`prunekit report f | head` printed '[Errno 32] Broken pipe' once the reader had left."""
    many = tmp_path / "many.py"
    many.write_text("from torch import nn\n\ndef make():\n    return nn.Sequential(*[nn.Linear(4, 4) for _ in range(1500)])\n")
    out = tmp_path / "m.pk"
    assert main(["prune", f"{many}:make", "--sparsity", "0.5", "--out", str(out)]) == 0
    done = subprocess.run(f"{sys.executable} -m prunekit.cli report {out} | head -1", shell=True, capture_output=True,
                          text=True, timeout=120)  # ~250 KB of table: more than a pipe holds
    assert done.stdout.count("\n") == 1 and "Broken pipe" not in done.stderr and "Traceback" not in done.stderr


def test_structured_with_a_value_is_the_deprecated_form_of_structured_sparsity(factory, tmp_path, capsys):
    old, new = tmp_path / "old.pk", tmp_path / "new.pk"
    assert main(["prune", factory, "--structured", "0.5", "--input", "1x32", "--out", str(old)]) == 0
    assert "write --structured --sparsity 0.5" in capsys.readouterr().err
    assert main(["prune", factory, "--structured", "--sparsity", "0.5", "--input", "1x32", "--out", str(new)]) == 0
    assert pk.deploy.storage.read_header(old)["structured"] == pk.deploy.storage.read_header(new)["structured"]
