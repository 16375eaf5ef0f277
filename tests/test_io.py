"""Writes are atomic: a crash, kill -9 or error part-way leaves the previous file as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import _io


def _model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    pk.prune(m, 0.5)
    return m


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.pk"
    pk.save(_model(), path)
    good = path.read_bytes()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with _io.atomic_write(path) as f:
            f.write(b"half a file")
            raise Boom
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["m.pk"]


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    old = os.umask(0o027)
    try:
        pk.save(_model(), tmp_path / "new.pk")
        assert (tmp_path / "new.pk").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    (tmp_path / "new.pk").chmod(0o600)
    pk.save(_model(1), tmp_path / "new.pk")
    assert (tmp_path / "new.pk").stat().st_mode & 0o777 == 0o600


def test_output_paths_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        pk.save(_model(), tmp_path)
    with pytest.raises(ValueError, match="does not exist; create it first"):
        pk.save(_model(), tmp_path / "missing" / "m.pk")
    with pytest.raises(TypeError, match="file path"):
        pk.save(_model(), 42)


WRITER = textwrap.dedent("""
    import sys, torch, prunekit as pk
    from torch import nn
    path = sys.argv[1]
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])
    pk.prune(model, 0.5)
    print("ready", flush=True)
    while True:
        pk.save(model, path)
""")


@pytest.mark.slow
def test_kill_9_during_saves_never_leaves_a_damaged_file(tmp_path):
    path = tmp_path / "m.pk"
    pk.save(_model(), path)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    for delay in (0.05, 0.13, 0.31, 0.57):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        header = pk.deploy.storage.read_header(path)  # a whole, valid file: the old one or a new one
        target = nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])
        if "0.weight" in header["tensors"] and len(header["tensors"]) == 16:
            pk.load(path, target)
            assert pk.sparsity_report(target).sparsity == pytest.approx(0.5, abs=1e-3)
        else:
            pk.load(path, _model(1))
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert all(n.startswith(".m.pk.") for n in leftovers)  # only hidden temporaries of killed writes


def _writers(tmp_path):
    """Every public writer, each as a function of the destination path."""
    from prunekit.bench import benchmark
    from prunekit.deploy import export_onnx
    from prunekit.htmlreport import write_report
    from prunekit.schedules import OneShot

    model = _model()
    shrunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    pk.structured.prune_channels(shrunk, torch.randn(1, 64), sparsity=0.5)
    pruner = pk.Pruner(nn.Sequential(nn.Linear(8, 8)), OneShot(0.5))
    pruner.step()
    small = nn.Sequential(nn.Linear(8, 4)).eval()
    result = benchmark(small, torch.randn(1, 8), min_time_s=0.0, min_iters=1, warmup_s=0.0)
    advice = {"rows": [], "dense": {"latency_ms": 1.0, "quality": 1.0}, "quality_kind": "cosine", "matrix": []}
    return {
        "pk.save": lambda p: pk.save(model, p),
        "structured model": lambda p: pk.save(shrunk, p),
        "export_onnx": lambda p: export_onnx(small, torch.randn(1, 8), p),
        "BenchmarkResult.to_json": lambda p: result.to_json(p),
        "write_report": lambda p: write_report(advice, p),
        "Pruner.plot": lambda p: pruner.plot(p),
    }


@pytest.mark.parametrize("writer", ["pk.save", "structured model", "export_onnx", "BenchmarkResult.to_json",
                                    "write_report", "Pruner.plot"])
def test_every_writer_replaces_its_file_atomically(tmp_path, monkeypatch, writer):
    if writer == "export_onnx":
        pytest.importorskip("onnx")
    write = _writers(tmp_path)[writer]
    path = tmp_path / "out.file"
    path.write_bytes(b"the previous good file")

    def fail(src, dst):
        raise OSError("disk full at the last moment")

    monkeypatch.setattr(_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write(path)
    assert path.read_bytes() == b"the previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.file"]  # no temporary left behind
    monkeypatch.undo()
    write(path)
    assert path.read_bytes() != b"the previous good file"


def test_a_symlinked_destination_is_written_through(tmp_path):
    target = tmp_path / "real.pk"
    link = tmp_path / "link.pk"
    pk.save(_model(), target)
    link.symlink_to(target)
    pk.save(_model(1), link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert pk.deploy.storage.read_header(target)["model_class"] == "Sequential"
    assert target.read_bytes() == link.read_bytes()
    fresh = pk.load(target, _model(2))
    assert torch.equal(fresh[0].weight, _model(1)[0].weight)
