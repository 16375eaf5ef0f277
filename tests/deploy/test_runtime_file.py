"""save_runtime / load_runtime: a runtime model comes back with its choices and outputs, unmeasured."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from prunekit.deploy import (
    SparseConv2d,
    SparseLinear,
    SparseLinearInt8,
    dynamic_int8,
    load_runtime,
    save_runtime,
    to_sparse_runtime,
)
from prunekit.deploy import runtime as runtime_module
from prunekit.deploy.kernels import load

kernels = load()
needs_kernels = pytest.mark.skipif(kernels is None, reason="C++ kernels could not be built here")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x))).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _pruned(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    model = Net()
    pk.prune(model, 0.9, scope="layer", pattern="block:1x4", exclude="head")
    pk.finalize(model)
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)  # buffers outside the kernel layers must come back too
    return model.eval()


def _mixed_runtime(model: Net) -> nn.Module:
    """Every kind of layer the runtime makes, chosen by hand: CSR conv, CSR Linear, sparse int8, dynamic int8."""
    fast, _ = to_sparse_runtime(model)
    if kernels.has_vnni():
        fast.fc2 = SparseLinearInt8(model.fc2, kernels)
    fast.head = dynamic_int8(model.head)
    return fast.eval()


def _nonzeros(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        if isinstance(m, (SparseLinear, SparseConv2d)):
            total += int(torch.count_nonzero(m.values))
        elif isinstance(m, SparseLinearInt8):
            total += int(torch.count_nonzero(m.int8_weight()))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            total += int(torch.count_nonzero(m.weight))
    return total


@needs_kernels
def test_saved_runtime_loads_with_the_same_layers_outputs_and_zeros_without_timing(tmp_path, monkeypatch):
    model = _pruned()
    fast = _mixed_runtime(model)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        expected = fast(x)
    path = tmp_path / "fast.safetensors"
    layers = save_runtime(fast, path)
    assert set(layers) >= {"fc1", "fc2", "head"}
    monkeypatch.setattr(runtime_module, "_time", lambda *a, **k: pytest.fail("load_runtime re-timed a layer"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same CPU: nothing to re-choose, nothing to say
        loaded = load_runtime(path, Net())
    assert [type(m) for m in loaded.children()] == [type(m) for m in fast.children()]
    assert _nonzeros(loaded) == _nonzeros(fast)
    with torch.no_grad():
        out = loaded(x)
    assert torch.equal(out, expected)


@needs_kernels
def test_load_runtime_leaves_the_given_model_and_file_unchanged(tmp_path):
    fast = _mixed_runtime(_pruned())
    path = tmp_path / "fast.safetensors"
    save_runtime(fast, path)
    before = path.read_bytes()
    skeleton = Net()
    state = {k: v.clone() for k, v in skeleton.state_dict().items()}
    load_runtime(path, skeleton)
    assert all(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.Linear) for m in skeleton.children())
    assert all(torch.equal(v, state[k]) for k, v in skeleton.state_dict().items())
    assert path.read_bytes() == before


@needs_kernels
def test_a_runtime_saved_for_avx512_is_rechosen_on_the_portable_build(tmp_path, monkeypatch):
    if kernels.isa() != "avx512":
        pytest.skip("this CPU builds only the portable loop")
    model = _pruned()
    fast = _mixed_runtime(model)
    x = torch.randn(2, 4, 6, 6)
    path = tmp_path / "fast.safetensors"
    save_runtime(fast, path)
    monkeypatch.setenv("PRUNEKIT_KERNELS", "portable")  # as a CPU without AVX-512 would
    with pytest.warns(UserWarning, match="re-chose") as caught:
        loaded = load_runtime(path, Net())
    said = str(caught[0].message)
    assert "'avx512' build, this CPU runs 'portable'" in said and "conv: convolution kernels" in said
    assert type(loaded.conv) is nn.Conv2d and type(loaded.fc1) is SparseLinear and loaded.fc1._k.isa() == "portable"
    if kernels.has_vnni():
        assert "fc2: no AVX-512 VNNI" in said and type(loaded.fc2) is SparseLinear
    assert _nonzeros(loaded) == _nonzeros(fast)
    with torch.no_grad():
        assert torch.allclose(loaded(x), fast(x), rtol=1e-3, atol=1e-3)  # int8 weights kept, activations float


@needs_kernels
def test_runtime_file_from_another_model_or_a_newer_format_is_refused_by_name(tmp_path):
    fast = _mixed_runtime(_pruned())
    path = tmp_path / "fast.safetensors"
    save_runtime(fast, path)

    class Wider(Net):
        def __init__(self):
            super().__init__()
            self.fc2 = nn.Linear(64, 48)
            self.head = nn.Linear(48, 10)

    with pytest.raises(ValueError, match="layer 'fc2': out_features=32 in the file, 48 in model"):
        load_runtime(path, Wider())
    with pytest.raises(ValueError, match="layer 'conv' of the file is not in model"):
        load_runtime(path, nn.Sequential(nn.Linear(4, 4)))

    with safe_open(path, "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    header = json.loads(meta["prunekit_runtime"])
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, newer, metadata={"prunekit_runtime": json.dumps({**header, "format": 99})})
    with pytest.raises(ValueError, match="runtime format 99; this prunekit reads format 1"):
        load_runtime(newer, Net())
    plain = tmp_path / "plain.safetensors"
    pk.save(_pruned(), plain)
    with pytest.raises(ValueError, match="not a runtime file.*prunekit.load"):
        load_runtime(plain, Net())


@needs_kernels
@pytest.mark.parametrize("damage", ["index past the row", "indptr short", "values dtype", "chunks past the end"])
def test_a_damaged_runtime_file_is_refused_before_a_kernel_reads_it(tmp_path, damage):
    fast, _ = to_sparse_runtime(_pruned())
    path = tmp_path / "fast.safetensors"
    save_runtime(fast, path)
    with safe_open(path, "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    if damage == "index past the row":
        tensors["fc1.indices"][-1] = 10_000
    elif damage == "indptr short":
        tensors["fc1.indptr"] = tensors["fc1.indptr"][:-1].clone()
    elif damage == "values dtype":
        tensors["fc1.values"] = tensors["fc1.values"].double()
    else:
        tensors["fc1.chunks"][-1] += 1
    save_file(tensors, path, metadata=meta)
    with pytest.raises(ValueError, match="layer 'fc1'.*(damaged|inconsistent)"):
        load_runtime(path, Net())


def test_save_runtime_refuses_a_model_without_runtime_layers_and_writes_nothing(tmp_path):
    path = tmp_path / "fast.safetensors"
    with pytest.raises(ValueError, match="no kernel or int8 layers.*to_sparse_runtime"):
        save_runtime(Net(), path)
    assert not os.path.exists(path)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        save_runtime("fast", path)
    with pytest.raises(ValueError, match="is a folder"):
        save_runtime(Net(), tmp_path)


@needs_kernels
def test_kernel_layers_refuse_inputs_of_another_width():
    fast, _ = to_sparse_runtime(_pruned())
    with torch.no_grad(), pytest.raises(ValueError, match="SparseLinear takes inputs with 288 features.*got 287"):
        fast.fc1(torch.randn(2, 287))
    if kernels.has_conv():
        with torch.no_grad(), pytest.raises(ValueError, match="SparseConv2d takes inputs with 4 channels.*got 3"):
            fast.conv(torch.randn(1, 3, 6, 6))


@needs_kernels
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # examples: the profile
@given(data=st.data())
def test_fuzzed_runtime_files_load_and_run_or_are_refused_by_name(tmp_path, data):
    fast = _mixed_runtime(_pruned())
    path = tmp_path / "fast.safetensors"
    save_runtime(fast, path)
    with safe_open(path, "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    header = json.loads(meta["prunekit_runtime"])
    key = data.draw(st.sampled_from(sorted(k for k in tensors if not k.startswith("norm."))))
    how = data.draw(st.sampled_from(["set", "truncate", "dtype", "drop", "header"]))
    t = tensors[key]
    if how == "set" and t.numel():
        flat = t.reshape(-1).clone()
        i = data.draw(st.integers(0, flat.numel() - 1))
        value = data.draw(st.sampled_from([-1, 0, 1, 7, 10_000, 2**31 - 1]))
        flat[i] = value if flat.dtype != torch.int8 else max(-128, min(127, value))
        tensors[key] = flat.reshape(t.shape)
    elif how == "truncate" and t.numel():
        tensors[key] = t.reshape(-1)[:-1].clone()
    elif how == "dtype":
        tensors[key] = t.to(torch.float64 if t.is_floating_point() else torch.int16)
    elif how == "drop":
        del tensors[key]
    else:
        layer = data.draw(st.sampled_from(sorted(header["layers"])))
        field = data.draw(st.sampled_from(sorted(header["layers"][layer])))
        header["layers"][layer][field] = data.draw(st.sampled_from([None, -1, 0, 3, "x", [1], [0, 0, 99, 0]]))
    save_file(tensors, path, metadata={"prunekit_runtime": json.dumps(header)})
    x = torch.randn(2, 4, 6, 6)
    try:
        loaded = load_runtime(path, Net())
    except ValueError as e:
        assert "layer '" in str(e) or "path=" in str(e), str(e)
        return
    with torch.no_grad():
        out = loaded(x)
    assert out.shape == (2, 10)
