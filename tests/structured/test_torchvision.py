"""Every torchvision classification model prunes at sparsity 0.5 and still trains.

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


def _size(name: str) -> tuple[int, dict]:
    """The smallest input the model takes, and the builder arguments that allow it."""
    if name.startswith("vit_"):
        size = 56 if name.endswith("_14") else 64  # a multiple of the patch size
        return size, {"image_size": size}  # position embeddings sized for it
    if name.startswith("maxvit_"):
        return 224, {}  # 7 x 7 partitions at every stage
    if name == "inception_v3":
        return 299, {}  # its train-mode auxiliary head needs 17 x 17 maps
    return 64, {}


def test_the_list_is_torchvisions_80():
    assert len(MODELS) == 80


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_prunes_and_trains(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        size, kwargs = _size(name)
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    x = torch.randn(2, 3, size, size)
    report = prune_channels(model, x, sparsity=0.5)
    assert report.params[1] < report.params[0]
    assert report.macs[1] < report.macs[0]
    model.train()
    out = model(x)
    outs = list(out) if isinstance(out, tuple) else [out]  # train mode: auxiliary heads too
    assert all(o.shape == (2, 10) for o in outs)
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters() if p.requires_grad)
