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
    prune_channels(model, x, ratio=0.5, round_to=None)
    pk.prune(model, 0.6, include=lambda m, n: isinstance(m, nn.Linear))  # sparse on top
    pk.finalize(model)
    zeros = pk.sparsity_report(model).nonzeros
    path = pk.structured.save(model, tmp_path / "small.safetensors")
    fresh = EncoderBlock(num_heads=4, hidden_dim=32, mlp_dim=64, dropout=0.0, attention_dropout=0.0).eval()
    pk.structured.load(fresh, path)
    assert pk.sparsity_report(fresh).nonzeros == zeros
    torch.testing.assert_close(fresh(x), model(x))
    assert isinstance(fresh.self_attention, HeadPrunedMultiheadAttention) and fresh.self_attention.num_heads == 2


def test_save_and_load_hugging_face(tmp_path, minilm):
    from transformers import BertModel

    model, example = minilm
    model = copy.deepcopy(model)
    prune_channels(model, example, ratio=0.5)
    path = pk.structured.save(model, tmp_path / "bert.safetensors")
    fresh = pk.structured.load(BertModel(model.config).eval(), path)
    torch.testing.assert_close(fresh(**example).last_hidden_state, model(**example).last_hidden_state)
    assert fresh.encoder.layer[0].attention.self.num_attention_heads == 6


def test_load_refuses_other_files_and_models(tmp_path):
    model = nn.Linear(4, 4)
    pk.save(model, tmp_path / "masks.safetensors")
    with pytest.raises(ValueError, match="not a prunekit structured file"):
        pk.structured.load(model, tmp_path / "masks.safetensors")
    path = pk.structured.save(nn.Linear(4, 4), tmp_path / "s.safetensors")
    other = nn.Sequential(nn.Linear(4, 4))
    before = snapshot(other)
    with pytest.raises(ValueError, match="does not fit"):
        pk.structured.load(other, path)
    assert_unchanged(other, before)
