"""Runtime models as PyTorch operators: torch.compile, torch.export and AOTInductor give eager's outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.deploy import SparseLinearInt8, to_sparse_runtime
from prunekit.deploy.kernels import load

kernels = load()
needs_kernels = pytest.mark.skipif(kernels is None, reason="C++ kernels could not be built here")


def _runtime(conv: bool = False):
    """A 90%-pruned model rebound to the kernels (every layer sparse, unmeasured) and an input."""
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2), nn.Flatten(),
                              nn.Linear(8 * 7 * 7, 10))
        x = torch.randn(2, 3, 16, 16)
    else:
        model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16))
        x = torch.randn(4, 5, 32)
    pk.prune(model, 0.9, scope="layer")
    pk.finalize(model)
    fast, report = to_sparse_runtime(model.eval())
    assert all(r["choice"] == "sparse" for r in report.rows), str(report)
    return fast.eval(), x


def _ops_in(graph_module) -> set[str]:
    return {str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"}


@needs_kernels
@pytest.mark.parametrize("conv", [False, True])
def test_runtime_model_under_torch_compile_matches_eager(conv):
    fast, x = _runtime(conv)
    with torch.no_grad():
        eager = fast(x)
        compiled = torch.compile(fast, fullgraph=True)  # fullgraph: a graph break at a kernel layer fails here
        out = compiled(x)
        again = compiled(x * 2)
    # Inductor compiles GELU/ReLU itself, so equal up to float rounding; the kernels are the same calls
    assert torch.allclose(out, eager, rtol=1e-5, atol=1e-6)
    assert torch.allclose(again, fast(x * 2), rtol=1e-5, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("conv", [False, True])
def test_runtime_model_exports_with_its_operators_and_round_trips(conv, tmp_path):
    fast, x = _runtime(conv)
    with torch.no_grad():
        eager = fast(x)
        program = torch.export.export(fast, (x,))
    ops = _ops_in(program.graph_module)
    namespace = kernels.ops.name
    assert any(op.startswith(f"{namespace}.{'conv2d' if conv else 'linear'}") for op in ops), ops
    assert not any(op.startswith("aten.linear") or op.startswith("aten.conv") for op in ops), ops
    path = tmp_path / "fast.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path)
    with torch.no_grad():
        out = loaded.module()(x)
    assert torch.equal(out, eager)


@needs_kernels
def test_int8_kernel_layer_exports_as_its_operator():
    if not kernels.has_vnni():
        pytest.skip("no AVX-512 VNNI on this CPU")
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    pk.prune(lin, 0.9, pattern="block:1x4")
    pk.finalize(lin)
    layer = nn.Sequential(SparseLinearInt8(lin, kernels)).eval()
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        eager = layer(x)
        program = torch.export.export(layer, (x,))
        out = program.module()(x)
    assert any(op.startswith(f"{kernels.ops.name}.linear_int8") for op in _ops_in(program.graph_module))
    assert torch.equal(out, eager)


@pytest.mark.slow
@needs_kernels
def test_runtime_model_packages_with_aotinductor_and_serves_from_another_process(tmp_path):
    fast, x = _runtime()
    with torch.no_grad():
        eager = fast(x)
        program = torch.export.export(fast, (x,))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "fast.pt2"))
    torch.save({"x": x, "eager": eager}, tmp_path / "io.pt")
    serve = (  # a serving process: prunekit installed, nothing of the model's Python code
        "import sys, torch\n"
        "from prunekit.deploy.kernels import load\n"
        "assert load() is not None\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)\n"
        f"runner = torch._inductor.aoti_load_package({package!r})\n"
        "with torch.no_grad():\n"
        "    out = runner(io['x'])\n"
        "assert torch.allclose(out, io['eager'], rtol=1e-5, atol=1e-6), float((out - io['eager']).abs().max())\n"
        "print('served', tuple(out.shape))\n")
    done = subprocess.run([sys.executable, "-c", serve], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"served {tuple(eager.shape)}" in done.stdout
