"""Small models and a bit-exact snapshot of a model's state, shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """Conv + BN + two Linears: covers conv, norm buffers and a flatten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Tied(nn.Module):
    """An embedding whose weight is also the output projection's (as in language models)."""

    def __init__(self, vocab=16, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.hidden(self.emb(ids))))


def snapshot(model: nn.Module) -> dict:
    """Everything a rejected call must leave alone: tensors bit for bit, module classes, grads."""
    return {
        # raw tensors (originals under masks, mask buffers), not the state dict, which shows masked values
        "state": {k: v.detach().clone() for k, v in [*model.named_parameters(remove_duplicate=False),
                                                      *model.named_buffers(remove_duplicate=False)]},
        "classes": [(n, type(m).__name__) for n, m in model.named_modules()],
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["classes"] == before["classes"]
    assert after["training"] == before["training"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for k, g in before["grads"].items():
        h = after["grads"][k]
        assert (g is None and h is None) or torch.equal(g, h), k


def nonzeros(model: nn.Module) -> int:
    """Nonzeros as forward sees them (masks applied)."""
    import prunekit as pk

    return pk.sparsity_report(model).nonzeros
