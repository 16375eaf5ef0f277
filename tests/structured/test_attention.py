"""HeadPrunedMultiheadAttention computes what nn.MultiheadAttention computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.structured import HeadPrunedMultiheadAttention


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "attn_bool", "attn_float"])
def test_same_as_torch_with_all_heads(batch_first, need_weights, masks):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = copy.deepcopy(ref)
    ours.__class__ = HeadPrunedMultiheadAttention
    q = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    kwargs = {}
    if masks == "padding":
        kwargs["key_padding_mask"] = torch.tensor([[False] * 4 + [True], [False] * 5])
    elif masks == "attn_bool":
        kwargs["attn_mask"] = torch.ones(5, 5, dtype=torch.bool).triu(1)
    elif masks == "attn_float":
        kwargs["attn_mask"] = torch.randn(5, 5)
    with torch.no_grad():
        out_ref, w_ref = ref(q, q, q, need_weights=need_weights, **kwargs)
        out, w = ours(q, q, q, need_weights=need_weights, **kwargs)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    if need_weights:
        torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    else:
        assert w is None


def test_fewer_heads_than_embed_dim_allows():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 4, batch_first=True)
    keep = torch.cat([torch.arange(0, 4), torch.arange(8, 12)])  # heads 0 and 2 of q, k and v
    rows = torch.cat([keep, keep + 16, keep + 32])
    m.in_proj_weight = nn.Parameter(m.in_proj_weight.detach()[rows])
    m.in_proj_bias = nn.Parameter(m.in_proj_bias.detach()[rows])
    m.out_proj.weight = nn.Parameter(m.out_proj.weight.detach()[:, keep])
    m.out_proj.in_features = 8
    m.__class__ = HeadPrunedMultiheadAttention
    m.num_heads = 2
    x = torch.randn(3, 7, 16, requires_grad=True)
    out, _ = m(x, x, x)
    assert out.shape == (3, 7, 16)
    out.sum().backward()
    assert m.in_proj_weight.grad.shape == (24, 16)
