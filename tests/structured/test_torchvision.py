"""Every torchvision classification model prunes at ratio 0.5 and still trains.

One parametrized test per model in ``torchvision.models.list_models(module=torchvision.models)``,
random weights, the smallest input the model accepts, batch 2 (train-mode batch norm needs it).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

from prunekit.structured import prune_channels

MODELS = torchvision.models.list_models(module=torchvision.models)
FIXED_224 = ("vit_", "swin_", "maxvit_")  # position embeddings / windows tied to 224 x 224


def _size(name: str) -> int:
    if name.startswith(FIXED_224):
        return 224
    if name == "inception_v3":
        return 75
    return 64


def test_the_list_is_torchvisions_80():
    assert len(MODELS) == 80


@pytest.mark.parametrize("name", MODELS)
def test_prunes_and_trains(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(2, 3, _size(name), _size(name))
    report = prune_channels(model, x, ratio=0.5)
    assert report.params[1] < report.params[0]
    assert report.macs[1] < report.macs[0]
    model.train()
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters() if p.requires_grad)
