"""Channel criteria are prunekit's element criteria reduced over each unit's elements."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria import Criterion, FunctionCriterion
from prunekit.structured import Group, groups, prune_channels
from prunekit.structured.scores import reduce_units, score_groups


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


X = torch.randn(3, 4)


def hidden(model):
    """The one prunable group: rows of 0.weight and 0.bias, columns of 2.weight."""
    (g,) = [g for g in groups(model, X) if g.prunable]
    assert set(g.members) == {("0.weight", 0), ("0.bias", 0), ("2.weight", 1)}
    return g


def normalised(x):
    return x.double() / x.double().mean()


def test_reduce_units_is_the_l1_or_l2_norm_of_each_unit():
    w = torch.randn(8, 4, 3)
    rows = np.arange(8)[:, None]
    torch.testing.assert_close(reduce_units(w.square(), 0, rows, root=True), w.flatten(1).norm(dim=1))
    torch.testing.assert_close(reduce_units(w.abs(), 0, rows), w.abs().flatten(1).sum(1))
    heads = np.arange(8).reshape(2, 4)  # a unit of 4 rows
    torch.testing.assert_close(reduce_units(w.square(), 0, heads, root=True), w.reshape(2, -1).norm(dim=1))


def test_the_l2_score_of_a_channel_is_the_l2_norm_of_its_output_weights():
    model = mlp()
    w = model[0].weight.detach()
    only_rows = Group(members=[("0.weight", 0)], index={("0.weight", 0): np.arange(6)[:, None]}, width=1)
    (score,) = score_groups(model, [only_rows], "l2")
    torch.testing.assert_close(score, normalised(w.norm(dim=1)))


def test_a_coupled_group_adds_each_tensors_norms_relative_to_their_mean():
    model = mlp()
    (score,) = score_groups(model, [hidden(model)], "l2")
    expected = (normalised(model[0].weight.detach().norm(dim=1)) + normalised(model[0].bias.detach().abs())
                + normalised(model[2].weight.detach().norm(dim=0)))
    torch.testing.assert_close(score, expected)
    (score,) = score_groups(model, [hidden(model)], "l1")
    expected = (normalised(model[0].weight.detach().abs().sum(1)) + normalised(model[0].bias.detach().abs())
                + normalised(model[2].weight.detach().abs().sum(0)))
    torch.testing.assert_close(score, expected)


def test_taylor_is_the_reduction_of_the_element_taylor_scores():
    model = mlp()
    model(X).pow(2).sum().backward()
    (score,) = score_groups(model, [hidden(model)], "taylor")
    w0, b0, w2 = model[0].weight, model[0].bias, model[2].weight
    expected = (normalised((w0 * w0.grad).abs().sum(1)) + normalised((b0 * b0.grad).abs())
                + normalised((w2 * w2.grad).abs().sum(0)))
    torch.testing.assert_close(score, expected.detach())


def test_taylor_from_data_matches_taylor_from_a_backward_run():
    target = torch.randn(3, 2)
    with_grad, with_data = mlp().eval(), mlp().eval()
    nn.functional.mse_loss(with_grad(X), target).backward()
    prune_channels(with_grad, X, sparsity=0.5, criterion="taylor", round_to=None, progress=False)
    prune_channels(with_data, X, sparsity=0.5, criterion="taylor", round_to=None, progress=False,
                   data=[pk.inputs.Labeled(X, target)], loss_fn=nn.functional.mse_loss)
    torch.testing.assert_close(with_data[0].weight, with_grad[0].weight)
    assert all(p.grad is None for p in with_data.parameters())  # gradients came from data, .grad untouched


def by_position(weight, context):
    """An element criterion: later elements score higher (so the last rows and columns stay)."""
    return torch.arange(weight.numel(), dtype=torch.float32).reshape(weight.shape)


class Reversed(Criterion):
    name = "reversed"

    def score(self, weight, context):
        return -by_position(weight, context)


@pytest.mark.parametrize("criterion, kept", [
    (by_position, [3, 4, 5]),
    (FunctionCriterion(by_position), [3, 4, 5]),
    (Reversed(), [0, 1, 2]),
    (Reversed, [0, 1, 2]),
])
def test_a_custom_element_criterion_decides_which_channels_go(criterion, kept):
    model = mlp()
    w = model[0].weight.detach().clone()
    report = prune_channels(model, X, sparsity=0.5, criterion=criterion, round_to=None, progress=False)
    torch.testing.assert_close(model[0].weight, w[kept])
    assert report.criterion in ("by_position", "reversed")
    default = mlp()
    prune_channels(default, X, sparsity=0.5, round_to=None, progress=False)
    assert not torch.equal(default[0].weight, model[0].weight)  # the criterion, not l2, chose


def test_element_criterion_names_work_and_agree_with_the_channel_names():
    a, b = mlp(), mlp()
    prune_channels(a, X, sparsity=0.5, criterion="magnitude", round_to=None, progress=False)
    prune_channels(b, X, sparsity=0.5, criterion="l1", round_to=None, progress=False)
    torch.testing.assert_close(a[0].weight, b[0].weight)


def test_scores_leave_the_model_as_it_was():
    model = mlp()
    model(X).sum().backward()
    before = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    g = hidden(model)
    for criterion in ("l1", "l2", "taylor", "random", "fpgm", "bn_scale"):
        score_groups(model, [g], criterion)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
