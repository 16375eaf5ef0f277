"""prunekit.save / load: exact round trip, size, different-model refusal, no unpickling."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from tests.helpers import Net, Tied, assert_unchanged, nonzeros, snapshot


def _big(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))


def test_round_trip_is_exact_for_weights_masks_and_buffers(tmp_path, x):
    torch.manual_seed(0)
    model = Net()
    model.train()
    model(x)  # non-trivial BatchNorm statistics
    model.eval()
    pk.prune(model, 0.8)
    pk.prune(model, 0.5, pattern="2:4", include="fc2")
    nz = nonzeros(model)
    info = pk.save(model, tmp_path / "m.safetensors")
    fresh = Net().eval()
    pk.load(info.path, fresh)
    assert nonzeros(fresh) == nz
    for name, mask in pk.masks(model).items():
        assert torch.equal(pk.masks(fresh)[name], mask)
    assert pk.sparsity_report(fresh)["fc2.weight"].pattern == "2:4"
    assert torch.equal(fresh.bn.running_mean, model.bn.running_mean)
    assert torch.equal(fresh(x), model(x))


def test_ninety_percent_file_is_at_most_015_of_dense(tmp_path):
    model = _big()
    dense_path = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dense_path))
    pk.prune(model, 0.9, include=nn.Linear, scope="layer")
    pk.prune(model, 0.9, include="*.bias", scope="layer")
    info = pk.save(model, tmp_path / "sparse.safetensors")
    assert info.file_bytes <= 0.15 * dense_path.stat().st_size
    assert info.ratio <= 0.15 and info.dense_bytes >= 0.99 * dense_path.stat().st_size


def test_finalized_model_still_compresses_and_reloads_without_masks(tmp_path):
    model = _big()
    pk.prune(model, 0.9)
    pk.finalize(model)
    nz = nonzeros(model)
    info = pk.save(model, tmp_path / "f.safetensors")
    assert info.ratio < 0.2
    fresh = _big(1)
    pk.load(info.path, fresh)
    assert pk.masks(fresh) == {} and nonzeros(fresh) == nz
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in fresh.state_dict().items())


def test_kept_weight_that_is_exactly_zero_stays_kept(tmp_path):
    layer = nn.Linear(8, 4)
    pk.prune(layer, 0.5)
    with torch.no_grad():
        mask = pk.masks(layer)["weight"]
        layer.parametrizations.weight.original[mask.nonzero()[0].tolist()[0], mask.nonzero()[0].tolist()[1]] = 0.0
    path = tmp_path / "z.safetensors"
    pk.save(layer, path)
    fresh = pk.load(path, nn.Linear(8, 4))
    assert torch.equal(pk.masks(fresh)["weight"], mask)


def test_tied_weights_round_trip_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    pk.prune(model, 0.5, include=[nn.Linear, nn.Embedding])
    path = tmp_path / "t.safetensors"
    pk.save(model, path)
    fresh = pk.load(path, Tied())
    ids = torch.tensor([[0, 5, 9]])
    assert torch.equal(fresh(ids), model(ids))
    assert fresh.emb.parametrizations.weight.original is fresh.head.parametrizations.weight.original


def test_file_from_a_different_model_is_refused_and_changes_nothing(tmp_path):
    model = Net()
    pk.prune(model, 0.5)
    path = tmp_path / "m.safetensors"
    pk.save(model, path)
    other = _big()
    before = snapshot(other)
    with pytest.raises(ValueError, match="different model"):
        pk.load(path, other)
    assert_unchanged(other, before)
    wider = Net()
    wider.fc2 = nn.Linear(32, 9)
    before = snapshot(wider)
    with pytest.raises(ValueError, match="shape differs"):
        pk.load(path, wider)
    assert_unchanged(wider, before)


def test_plain_safetensors_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a prunekit file"):
        pk.load(path, Net())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pk.load(tmp_path / "nope.safetensors", Net())


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model = Net()
    pk.prune(model, 0.5)
    path = tmp_path / "m.safetensors"
    pk.save(model, path)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fresh = pk.load(path, Net())
    assert nonzeros(fresh) == nonzeros(model)


@pytest.mark.parametrize("quantize, tol", [(None, 0.0), ("int8", 1e-2), ("int4", 0.2)])
@pytest.mark.parametrize("compress", [None, "lzma"])
def test_quantized_and_compressed_files_keep_zeros_and_approximate_values(tmp_path, quantize, tol, compress):
    model = _big()
    pk.prune(model, 0.9, scope="layer")
    plain = pk.save(model, tmp_path / "plain.safetensors")
    info = pk.save(model, tmp_path / "q.pk", quantize=quantize, compress=compress)
    assert info.file_bytes <= plain.file_bytes
    fresh = pk.load(info.path, _big(1))
    for name, mask in pk.masks(model).items():
        assert torch.equal(pk.masks(fresh)[name], mask)
        w_new = fresh.get_submodule(name.rsplit(".", 1)[0]).weight.detach()
        w_old = model.get_submodule(name.rsplit(".", 1)[0]).weight.detach()
        assert bool((w_new[~mask] == 0).all())  # zeros stay zero
        rel = (w_new - w_old).abs().max() / w_old.abs().max()
        assert rel <= tol + 1e-7
    if quantize is None and compress == "lzma":
        assert info.file_bytes < plain.file_bytes


def test_bad_save_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="quantize='fp8'"):
        pk.save(Net(), tmp_path / "a", quantize="fp8")
    with pytest.raises(ValueError, match="compress='zip'"):
        pk.save(Net(), tmp_path / "a", compress="zip")
    (tmp_path / "junk").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a prunekit file"):
        pk.load(tmp_path / "junk", Net())


def test_loading_converts_to_the_models_dtype_and_keeps_custom_pattern_names(tmp_path):
    model = Net()
    pk.prune(model, 0.5)
    pk.apply_masks(model, {"fc2.weight": torch.rand(8, 32) > 0.5}, pattern="my lottery ticket")
    pk.save(model, tmp_path / "m.pk")
    half = pk.load(tmp_path / "m.pk", Net().half())
    assert half.fc1.weight.dtype == torch.float16 and nonzeros(half) == nonzeros(model)
    assert pk.sparsity_report(half)["fc2.weight"].pattern == "my lottery ticket"


def test_uncommon_dtypes_round_trip(tmp_path):
    model = nn.Linear(4, 4)
    model.register_buffer("u16", torch.arange(6).to(torch.uint16))
    model.register_buffer("f8", torch.linspace(-2, 2, 8).to(torch.float8_e4m3fn))
    model.register_buffer("c64", torch.randn(3, dtype=torch.complex64))
    pk.prune(model, 0.5)
    pk.save(model, tmp_path / "u.pk")
    fresh = nn.Linear(4, 4)
    for name in ("u16", "f8", "c64"):
        fresh.register_buffer(name, torch.zeros_like(getattr(model, name)))
    pk.load(tmp_path / "u.pk", fresh)
    for name in ("u16", "f8", "c64"):
        assert torch.equal(getattr(fresh, name).view(torch.uint8), getattr(model, name).view(torch.uint8)), name
