"""Small models shared by the structured tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mixed(nn.Module):
    """Residual add, depthwise conv, concatenation, chunk, flatten -> Linear, in one small CNN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b = nn.Conv2d(16, 12, 1)
        self.c = nn.Conv2d(16, 12, 1)
        self.mix = nn.Conv2d(12, 24, 1)  # consumes half of cat([b, c]) after chunk
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + F.relu(self.a(x))
        x = F.relu(self.dw(x))
        y = torch.cat([self.b(x), self.c(x)], 1)
        left, right = y.chunk(2, 1)
        z = self.mix(left * torch.sigmoid(right))
        z = F.adaptive_avg_pool2d(z[:, : z.shape[1] // 2], 4)
        return self.fc(z.flatten(1))
