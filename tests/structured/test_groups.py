"""groups(): what must go together, and why some channels stay."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.structured import groups, prune_channels
from tests.structured.common import Mixed


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.fft.fft(self.a(x)).real)


def test_groups_see_residuals_and_model_io():
    model = Mixed()
    found = groups(model, torch.randn(1, 3, 8, 8))
    stem = next(g for g in found if ("stem.weight", 0) in g.members)
    assert ("a.weight", 0) in stem.members and ("dw.weight", 0) in stem.members  # residual + depthwise
    assert stem.prunable and len(stem) == 16
    out = next(g for g in found if ("fc.weight", 0) in g.members)
    assert not out.prunable and "model output" in out.reason
    rgb = next(g for g in found if ("stem.weight", 1) in g.members)
    assert not rgb.prunable


def test_unknown_operations_pin_what_they_touch():
    model = Unknown()
    found = groups(model, torch.randn(2, 4))
    hidden = next(g for g in found if ("a.weight", 0) in g.members)
    assert not hidden.prunable and "fft" in hidden.reason
    prune_channels(model, torch.randn(2, 4), sparsity=0.5)
    assert model.a.out_features == 16

