"""include= / exclude= in prune_channels and groups: prunekit.prune's selectors, with its rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.structured import groups, prune_channels
from tests.helpers import assert_unchanged, snapshot


class TwoBlocks(nn.Module):
    """A residual stream of width 8 through two blocks, each widening to 16 inside."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block1(x)
        x = x + self.block2(x)
        return self.head(x.mean((2, 3)))


X = torch.randn(2, 3, 6, 6)


def model():
    torch.manual_seed(0)
    return TwoBlocks()


def tensors(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def changed(before, m):
    after = m.state_dict()
    return {k for k in before if before[k].shape != after[k].shape or not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("include", ["block1", "block1.*", lambda m, fqn: fqn.startswith("block1.")])
def test_include_selects_a_subtree(include):
    m = model()
    before = tensors(m)
    prune_channels(m, X, sparsity=0.5, round_to=None, include=include, progress=False)
    assert changed(before, m) == {"block1.0.weight", "block1.0.bias", "block1.1.weight", "block1.1.bias",
                                  "block1.1.running_mean", "block1.1.running_var", "block1.3.weight"}
    assert m.block1[0].out_channels == m.block1[3].in_channels == 8 and m.block2[0].out_channels == 16
    assert m.stem.out_channels == 8  # the residual width is shared with layers outside block1: kept
    assert m(X).shape == (2, 3)


def test_the_default_selects_every_linear_and_conv():
    m = model()
    prune_channels(m, X, sparsity=0.5, round_to=None, progress=False)
    assert m.block1[0].out_channels == m.block2[0].out_channels == 8 and m.stem.out_channels == 4


def test_a_partly_selected_group_is_kept_and_says_why():
    found = groups(model(), X, include="block1")
    width = next(g for g in found if ("stem.weight", 0) in g.members)
    assert not width.prunable and "include= leaves out" in width.reason
    inner = next(g for g in found if ("block1.0.weight", 0) in g.members)
    assert inner.prunable
    other = next(g for g in found if ("block2.0.weight", 0) in g.members)
    assert not other.prunable and "not selected" in other.reason


def test_include_and_exclude_together_and_by_type():
    m = model()
    prune_channels(m, X, sparsity=0.5, round_to=None, include="block*", exclude="block2", progress=False)
    assert m.block1[0].out_channels == 8 and m.block2[0].out_channels == 16
    m = model()
    prune_channels(m, X, sparsity=0.5, round_to=None, exclude=nn.BatchNorm2d, progress=False)  # norms protect
    assert m.block1[0].out_channels == m.block2[0].out_channels == 16 and m.stem.out_channels == 4


def test_an_excluded_layer_protects_the_groups_coupled_to_it():
    found = groups(model(), X, exclude="head")
    width = next(g for g in found if ("stem.weight", 0) in g.members)
    assert not width.prunable and width.reason.startswith("excluded")
    assert next(g for g in found if ("block1.0.weight", 0) in g.members).prunable


@pytest.mark.parametrize("kwargs, match", [
    ({"include": "blokc1"}, "include='blokc1' matches no module or parameter name"),
    ({"include": ["block1", "nope.*"]}, "include='nope.\\*' matches no module"),
    ({"exclude": "head.weigth"}, "exclude='head.weigth' matches no module"),
    ({"include": nn.Embedding}, "matched no parameters"),
    ({"include": "block1", "exclude": "block1"}, "matched no parameters"),
])
def test_a_selection_that_matches_nothing_is_an_error_and_changes_nothing(kwargs, match):
    m = model()
    m.block1.eval()  # modes too must come back as they were
    before = snapshot(m)
    runs = []
    m.register_forward_pre_hook(lambda mod, args: runs.append(1))
    with pytest.raises(ValueError, match=match):
        prune_channels(m, X, sparsity=0.5, progress=False, **kwargs)
    assert_unchanged(m, before)
    assert not runs  # rejected before the model ran
    with pytest.raises(ValueError, match=match):
        groups(m, X, **kwargs)
