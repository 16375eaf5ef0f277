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
    fast.fc1 = SparseLinear(model.fc1, kernels)  # not left to timing: every test below relies on these kinds
    fast.conv = SparseConv2d(model.conv, kernels)
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
    assert "'avx512' build, this CPU runs 'portable'" in said
    assert type(loaded.conv) is SparseConv2d and loaded.conv._k.isa() == "portable"  # the portable build has convs
    assert type(loaded.fc1) is SparseLinear and loaded.fc1._k.isa() == "portable"
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


def _arrays(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["prunekit_runtime"])


def _rows_swapped(t):  # a non-monotone indptr that still starts at 0 and ends at the count
    t = t.clone()
    first, second = int(t[1]), int(t[2])
    t[1], t[2] = second + 1, first
    return t


# (layer damaged, what is done to the saved arrays or record, what the refusal says)
DAMAGE = {
    "index past the row": ("fc1", lambda t, h: t["fc1.indices"].__setitem__(-1, 10_000), "inconsistent"),
    "negative index": ("fc1", lambda t, h: t["fc1.indices"].__setitem__(0, -1), "inconsistent"),
    "indptr short": ("fc1", lambda t, h: t.__setitem__("fc1.indptr", t["fc1.indptr"][:-1].clone()), "1-d torch.int64"),
    "indptr not rising": ("fc1", lambda t, h: t.__setitem__("fc1.indptr", _rows_swapped(t["fc1.indptr"])),
                          "inconsistent"),
    "values dtype": ("fc1", lambda t, h: t.__setitem__("fc1.values", t["fc1.values"].double()), "torch.float64"),
    "chunks past the end": ("fc1", lambda t, h: t["fc1.chunks"].__setitem__(-1, t["fc1.chunks"][-1] + 1),
                            "inconsistent"),
    "chunks not from 0": ("fc1", lambda t, h: t["fc1.chunks"].__setitem__(0, 1), "inconsistent"),
    "extra array": ("fc1", lambda t, h: t.__setitem__("fc1.extra", torch.zeros(3)), "arrays .* in the file"),
    "bias dropped": ("fc1", lambda t, h: t.pop("fc1.bias"), "arrays .* in the file"),
    "conv index past the patch": ("conv", lambda t, h: t["conv.indices"].__setitem__(-1, 4 * 9), "inconsistent"),
    "conv padding": ("conv", lambda t, h: h["layers"]["conv"].__setitem__("pad", [9, 9, 9, 9]), "pad="),
    "conv stride as text": ("conv", lambda t, h: h["layers"]["conv"].__setitem__("stride", "1"), "stride="),
    "size as float": ("fc1", lambda t, h: h["layers"]["fc1"].__setitem__("in_features", 288.0), "in_features="),
    "dynamic int8 negative scale": ("head", lambda t, h: h["layers"]["head"].__setitem__("scale", -0.1),
                                    "not an int8 quantization"),
    "dynamic int8 shape": ("head", lambda t, h: t.__setitem__("head.weight_int8", t["head.weight_int8"][:, :-1]
                                                             .contiguous()), "weight_int8"),
    "unknown build": ("fc1", lambda t, h: h["layers"]["fc1"].__setitem__("isa", "avx10"), "build 'avx10'"),
}
INT8_DAMAGE = {
    "int8 group past the row": ("fc2", lambda t, h: t["fc2.groups"].__setitem__(-1, 16), "inconsistent"),
    "int8 row sums": ("fc2", lambda t, h: t["fc2.row_sums"].__setitem__(0, t["fc2.row_sums"][0] + 1), "row_sums"),
    "int8 scale length": ("fc2", lambda t, h: t.__setitem__("fc2.scale", t["fc2.scale"][:-1].clone()), "'scale'"),
    "int8 scale not finite": ("fc2", lambda t, h: t["fc2.scale"].__setitem__(0, float("nan")), "non-finite"),
}


@needs_kernels
@pytest.mark.parametrize("damage", sorted(DAMAGE) + sorted(INT8_DAMAGE))
def test_a_damaged_runtime_file_is_refused_by_layer_and_array_before_a_kernel_reads_it(tmp_path, damage):
    if damage in INT8_DAMAGE and not kernels.has_vnni():
        pytest.skip("sparse int8 layers need AVX-512 VNNI")
    path = tmp_path / "fast.safetensors"
    save_runtime(_mixed_runtime(_pruned()), path)
    tensors, header = _arrays(path)
    layer, change, says = {**DAMAGE, **INT8_DAMAGE}[damage]
    change(tensors, header)
    save_file(tensors, path, metadata={"prunekit_runtime": json.dumps(header)})
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match=f"layer '{layer}'.*{says}") as e:
        load_runtime(path, Net())
    assert "re-save it with prunekit.deploy.save_runtime" in str(e.value) or "in model" in str(e.value)
    assert open(path, "rb").read() == before


@pytest.mark.parametrize("damage", ["header a list", "format as text", "no layers", "invalid JSON", "truncated"])
def test_a_runtime_file_that_cannot_be_read_is_refused_naming_the_path(tmp_path, damage):
    path = tmp_path / "fast.safetensors"
    tensors = {"fc1.indptr": torch.zeros(3, dtype=torch.int64)}
    record = {"header a list": "[1, 2]", "format as text": json.dumps({"format": "1", "layers": {"fc1": {}}}),
              "no layers": json.dumps({"format": 1, "layers": {}}), "invalid JSON": "{format: 1",
              "truncated": json.dumps({"format": 1, "layers": {"fc1": {}}})}[damage]
    save_file(tensors, path, metadata={"prunekit_runtime": record})
    if damage == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) - 5])
    with pytest.raises(ValueError, match=f"path='{path}'"):
        load_runtime(path, Net())
    with pytest.raises(FileNotFoundError):
        load_runtime(tmp_path / "none.safetensors", Net())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        load_runtime(path, "Net")


@needs_kernels
def test_load_runtime_wants_a_fresh_model_and_save_runtime_a_model_around_its_layers(tmp_path):
    fast, _ = to_sparse_runtime(_pruned())
    path = tmp_path / "fast.safetensors"
    with pytest.raises(ValueError, match="model is itself a SparseLinear.*Sequential"):
        save_runtime(fast.fc1, path)
    assert not os.path.exists(path)
    save_runtime(torch.compile(fast), path)  # the compiled wrapper saves the model it wraps (nothing compiles yet)
    with pytest.raises(ValueError, match="model already holds kernel layers.*freshly built"):
        load_runtime(path, fast)
    loaded = load_runtime(path, Net())
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), fast(x))


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
    fast = _mixed_runtime(_pruned())
    if kernels.has_vnni():
        with torch.no_grad(), pytest.raises(ValueError, match="SparseLinearInt8 takes inputs x with 64 features.*got 65"):
            fast.fc2(torch.randn(2, 65))
    with torch.no_grad(), pytest.raises(ValueError, match="SparseLinear takes inputs x with 288 features.*got 287"):
        fast.fc1(torch.randn(2, 287))
    with torch.no_grad(), pytest.raises(ValueError, match="SparseConv2d takes inputs x with 4 channels.*got 3"):
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
