"""Structured files: saved with sizes, loaded into a fresh instance, zeros kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.structured import HeadPrunedMultiheadAttention, prune_channels
from tests.helpers import assert_unchanged, snapshot


def test_save_and_load_into_a_fresh_model(tmp_path):
    from torchvision.models.vision_transformer import EncoderBlock

    torch.manual_seed(0)
    model = EncoderBlock(num_heads=4, hidden_dim=32, mlp_dim=64, dropout=0.0, attention_dropout=0.0).eval()
    x = torch.randn(2, 5, 32)
    prune_channels(model, x, sparsity=0.5, round_to=None)
    pk.prune(model, 0.6, include=lambda m, n: isinstance(m, nn.Linear))  # sparse on top
    pk.finalize(model)
    zeros = pk.sparsity_report(model).nonzeros
    path = pk.save(model, tmp_path / "small.safetensors").path
    fresh = EncoderBlock(num_heads=4, hidden_dim=32, mlp_dim=64, dropout=0.0, attention_dropout=0.0).eval()
    pk.load(path, fresh)
    assert pk.sparsity_report(fresh).nonzeros == zeros
    torch.testing.assert_close(fresh(x), model(x))
    assert isinstance(fresh.self_attention, HeadPrunedMultiheadAttention) and fresh.self_attention.num_heads == 2


def test_save_and_load_hugging_face(tmp_path, minilm):
    from transformers import BertModel

    model, example = minilm
    model = copy.deepcopy(model)
    prune_channels(model, example, sparsity=0.5)
    path = pk.save(model, tmp_path / "bert.safetensors").path
    fresh = pk.load(path, BertModel(model.config).eval())
    torch.testing.assert_close(fresh(**example).last_hidden_state, model(**example).last_hidden_state)
    assert fresh.encoder.layer[0].attention.self.num_attention_heads == 6


def test_the_old_structured_spellings_still_work_and_say_what_replaces_them(tmp_path):
    """structured.save/load are deprecated spellings of prunekit.save/load: one format, either reads either file."""
    model = nn.Linear(4, 4)
    pk.prune(model, 0.5)
    pk.save(model, tmp_path / "masks.safetensors")
    with pytest.deprecated_call(match="use prunekit.load\\(path, model\\)"):
        fresh = pk.structured.load(nn.Linear(4, 4), tmp_path / "masks.safetensors")
    assert torch.equal(pk.masks(fresh)["weight"], pk.masks(model)["weight"])
    with pytest.deprecated_call(match="use prunekit.save\\(model, path\\)"):
        path = pk.structured.save(nn.Linear(4, 4), tmp_path / "s.safetensors")
    other = nn.Sequential(nn.Linear(4, 4))
    before = snapshot(other)
    with pytest.raises(ValueError, match="different model"), pytest.deprecated_call():
        pk.structured.load(other, path)
    assert_unchanged(other, before)
    with pytest.raises(TypeError, match="takes \\(model, path\\)"):
        pk.structured.load(path, other)


def test_prune_channels_then_plain_save_and_load_resize_a_fresh_model(tmp_path):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()  # noqa: E731
    model, x = make(), torch.randn(3, 16)
    prune_channels(model, x, sparsity=0.5, round_to=None)
    pk.prune(model, 0.5)  # masks on top of the smaller layers
    nz = pk.sparsity_report(model).nonzeros
    pk.save(model, tmp_path / "small.safetensors")
    fresh = pk.load(tmp_path / "small.safetensors", make())
    assert fresh[0].out_features == 32 and fresh[2].in_features == 32
    assert pk.sparsity_report(fresh).nonzeros == nz
    torch.testing.assert_close(fresh(x), model(x))
    pk.finalize(fresh)  # saved again, the sizes go with it
    pk.save(fresh, tmp_path / "again.safetensors")
    assert pk.load(tmp_path / "again.safetensors", make())[0].out_features == 32


def test_wider_file_or_masked_target_is_refused_unchanged(tmp_path):
    small = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8))
    prune_channels(small, torch.randn(2, 16), sparsity=0.5, round_to=None)
    pk.save(small, tmp_path / "small.safetensors")
    narrower = nn.Sequential(nn.Linear(16, 2), nn.ReLU(), nn.Linear(2, 8))  # the file would have to grow it
    before = snapshot(narrower)
    with pytest.raises(ValueError, match="shape differs"):
        pk.load(tmp_path / "small.safetensors", narrower)
    assert_unchanged(narrower, before)
    masked = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8))
    pk.prune(masked, 0.5)
    before = snapshot(masked)
    with pytest.raises(ValueError, match="unpruned instance"):
        pk.load(tmp_path / "small.safetensors", masked)
    assert_unchanged(masked, before)


def test_a_folder_or_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="is a folder; give the file inside it"):
        pk.load(tmp_path, nn.Linear(4, 4))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pk.load(tmp_path / "none.safetensors", nn.Linear(4, 4))
