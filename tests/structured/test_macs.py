"""count_macs_params against counts done by hand."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.structured import count_macs_params


def test_count_macs_params_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    macs, params = count_macs_params(model, torch.randn(1, 3, 4, 4))
    assert macs == 8 * 16 * 3 * 9 + 5 * 128
    assert params == 8 * 3 * 9 + 5 * 128 + 5
