"""Target selection: defaults, globs, predicates, ties, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.targets import find_targets, param_index
from tests.helpers import Net, Tied


def test_default_is_linear_and_conv_weights():
    assert [t.fqn for t in find_targets(Net())] == ["conv.weight", "fc1.weight", "fc2.weight"]


def test_globs_select_module_weights_or_named_parameters():
    net = Net()
    assert [t.fqn for t in find_targets(net, include="fc*")] == ["fc1.weight", "fc2.weight"]
    assert [t.fqn for t in find_targets(net, include="*.bias")] == ["conv.bias", "bn.bias", "fc1.bias", "fc2.bias"]
    assert [t.fqn for t in find_targets(net, include=(nn.Conv2d, nn.BatchNorm2d))] == ["conv.weight", "bn.weight"]
    assert [t.fqn for t in find_targets(net, include=["conv", "fc2.bias"])] == ["conv.weight", "fc2.bias"]


def test_module_globs_pick_linear_and_conv_param_globs_pick_anything():
    net = Net()
    assert [t.fqn for t in find_targets(net, include="*")] == ["conv.weight", "fc1.weight", "fc2.weight"]
    assert [t.fqn for t in find_targets(net, include="bn.weight")] == ["bn.weight"]
    assert [t.fqn for t in find_targets(net, include=[nn.Linear, nn.BatchNorm2d], exclude="bn")] == [
        "fc1.weight", "fc2.weight"]


def test_predicate_sees_module_and_name():
    seen = []

    def pick(module, fqn):
        seen.append(fqn)
        return isinstance(module, nn.Linear) and fqn.endswith("2")

    assert [t.fqn for t in find_targets(Net(), include=pick)] == ["fc2.weight"]
    assert {"conv", "bn", "fc1", "fc2"} <= set(seen)


def test_tied_parameter_is_one_target_with_aliases():
    model = Tied()
    [t] = find_targets(model, include="head")
    assert t.fqn == "emb.weight" and {a[2] for a in t.aliases} == {"emb.weight", "head.weight"}
    index = param_index(model)
    assert index["head.weight"] is index["emb.weight"]


def test_convtranspose_dims():
    [t] = find_targets(nn.ConvTranspose2d(4, 6, 3))
    assert (t.out_dim, t.in_dim) == (1, 0)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="matched no parameters.*module types"):
        find_targets(Net(), exclude=nn.Module)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        find_targets(torch.zeros(3))


def test_a_container_name_selects_everything_inside_it():
    """exclude='layer1' excluded nothing (layer1 has no weight of its own) while structured excluded all of it."""
    from prunekit.targets import find_targets

    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4))), nn.Linear(4, 2))
    assert [t.fqn for t in find_targets(model, exclude="0")] == ["1.weight"]
    assert [t.fqn for t in find_targets(model, include="0")] == ["0.0.weight", "0.1.0.weight"]
    assert [t.fqn for t in find_targets(model, include="0.1")] == ["0.1.0.weight"]
