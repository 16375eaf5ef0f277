"""count_macs_params against counts done by hand."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.structured import count_macs_params, prune_channels


def test_count_macs_params_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    macs, params = count_macs_params(model, torch.randn(1, 3, 4, 4))
    assert macs == 8 * 16 * 3 * 9 + 5 * 128
    assert params == 8 * 3 * 9 + 5 * 128 + 5


def test_report_counts_match_count_macs_params():
    from torchvision.models import resnet18

    x = torch.randn(1, 3, 32, 32)
    model = resnet18(num_classes=10)
    before = count_macs_params(model, x)
    report = prune_channels(model, x, sparsity=0.4)
    assert (report.macs[0], report.params[0]) == before
    assert (report.macs[1], report.params[1]) == count_macs_params(model, x)


def test_attention_macs():
    attn = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    macs, _ = count_macs_params(attn, (torch.randn(1, 5, 16),) * 3)
    assert macs == 3 * 5 * 16 * 16 + 2 * 5 * 5 * 16 + 5 * 16 * 16  # q, k, v, scores, mix, output projection
