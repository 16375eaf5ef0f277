"""timm models (ViT, ConvNeXt, EfficientNet, Swin) with random weights prune and train."""

from __future__ import annotations

import pytest
import torch

from prunekit.structured import groups, prune_channels

timm = pytest.importorskip("timm")

MODELS = {
    "vit_tiny_patch16_224": dict(img_size=64),
    "convnext_atto": {},
    "efficientnet_b0": {},
    "swin_tiny_patch4_window7_224": dict(img_size=112, window_size=7),
}


@pytest.mark.parametrize("name", MODELS)
def test_timm_prunes_and_trains(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name])
    size = MODELS[name].get("img_size", 64)
    x = torch.randn(2, 3, size, size)
    report = prune_channels(model, x, sparsity=0.5)
    assert report.macs[1] < 0.8 * report.macs[0]
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_timm_vit_heads_are_units():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64)
    found = groups(model, torch.randn(1, 3, 64, 64))
    heads = [g for g in found if g.kind == "heads" and g.prunable]
    assert len(heads) == len(model.blocks) and all(len(g) == model.blocks[0].attn.num_heads for g in heads)
