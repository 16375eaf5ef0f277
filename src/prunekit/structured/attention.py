"""``nn.MultiheadAttention`` with fewer heads than ``embed_dim / head_dim``.

torch requires ``embed_dim == num_heads * head_dim``, so removing heads from an
``nn.MultiheadAttention`` (and keeping the model's width) cannot be expressed with its own forward.
:class:`HeadPrunedMultiheadAttention` keeps every attribute, parameter name and the call signature
and computes attention over ``num_heads`` heads of ``head_dim`` each; ``in_proj_weight`` has
``3 * num_heads * head_dim`` rows and ``out_proj`` that many input features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadPrunedMultiheadAttention", "shrink_heads"]


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention whose inner width ``num_heads * head_dim`` may be below ``embed_dim``."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        tgt, batch, _ = query.shape
        src = key.shape[0]
        inner = self.num_heads * self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:inner], None if b is None else b[:inner])
        k = F.linear(key, w[inner:2 * inner], None if b is None else b[inner:2 * inner])
        v = F.linear(value, w[2 * inner:], None if b is None else b[2 * inner:])
        q, k, v = (x.reshape(x.shape[0], batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3) for x in (q, k, v))
        mask = None
        if attn_mask is not None:
            mask = attn_mask.view(batch, self.num_heads, tgt, src) if attn_mask.dim() == 3 else attn_mask
            mask = torch.zeros_like(mask, dtype=q.dtype).masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else mask
        if key_padding_mask is not None:
            pad = key_padding_mask.view(batch, 1, 1, src)
            pad = torch.zeros(pad.shape, dtype=q.dtype).masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else pad
            mask = pad if mask is None else mask + pad
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5
            if mask is not None:
                scores = scores + mask
            if is_causal and mask is None:
                scores = scores.masked_fill(torch.ones(tgt, src, dtype=torch.bool).triu(1), float("-inf"))
            weights = F.dropout(scores.softmax(-1), p, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
            weights = None
        out = out.permute(2, 0, 1, 3).reshape(tgt, batch, inner)
        out = self.out_proj(out)
        if self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        return out, weights


def shrink_heads(module: nn.MultiheadAttention, num_heads: int) -> None:
    """Mark ``module`` (already resized) as holding ``num_heads`` heads; switches its class."""
    if type(module) is nn.MultiheadAttention:
        module.__class__ = HeadPrunedMultiheadAttention
    module.num_heads = num_heads
