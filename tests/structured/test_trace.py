"""trace(): which slots one labelled run ties together, what it pins, and that it leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.structured.groups import build_groups
from prunekit.structured.macs import MACS
from prunekit.structured.ops import OPS, RULED, functions
from prunekit.structured.trace import RULES, preserved, trace
from tests.helpers import assert_unchanged, snapshot
from tests.structured.common import Mixed


class Residual(nn.Module):
    """fc1 feeds a residual add with fc2 through a batch norm; an auxiliary head runs in training only."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 2)
        self.aux = nn.Linear(8, 5)

    def forward(self, x):
        h = self.fc1(x)
        h = h + self.fc2(torch.relu(self.bn(h)))
        if self.training:
            return self.head(h), self.aux(h)
        return self.head(h)


def by_member(found, member):
    return next(g for g in found if member in g.members)


def grouped(model, example):
    with torch.no_grad():
        return build_groups(model, trace(model, example))


def test_a_residual_add_couples_both_branches_and_their_norm():
    found = grouped(Residual(), torch.randn(3, 4))
    width = by_member(found, ("fc1.weight", 0))
    assert set(width.members) == {
        ("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 0), ("fc2.bias", 0), ("fc2.weight", 1),
        ("bn.weight", 0), ("bn.bias", 0), ("bn.running_mean", 0), ("bn.running_var", 0),
        ("head.weight", 1), ("aux.weight", 1),  # aux: seen in the train-mode run
    }
    assert width.prunable and len(width) == 8 and width.width == 1
    for u in range(8):  # unit u is index u everywhere: the add keeps channels aligned
        assert all(idx.tolist() == [u] for idx in width.units[u].values())


def test_outputs_and_inputs_are_pinned_with_the_reason():
    found = grouped(Residual(), torch.randn(3, 4))
    head = by_member(found, ("head.weight", 0))
    assert set(head.members) == {("head.weight", 0), ("head.bias", 0)}
    assert not head.prunable and head.reason == "model output"
    aux = by_member(found, ("aux.weight", 0))
    assert not aux.prunable and aux.reason == "model output"  # an output of the train-mode run
    rgb = by_member(found, ("fc1.weight", 1))
    assert not rgb.prunable and "model's input" in rgb.reason


def test_the_train_mode_run_happens_only_when_eval_leaves_parameters_unused():
    t = trace(Residual(), torch.randn(3, 4))
    assert t.modes == {False: [(3, 2)], True: [(3, 2), (3, 5)]}
    t = trace(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(2, 4))
    assert t.modes == {False: [(2, 3)]}
    assert t.macs == 2 * (4 * 8 + 8 * 3)  # eval-mode MACs, counted on the way


def test_cat_then_chunk_keeps_exact_offsets():
    found = grouped(Mixed(), torch.randn(1, 3, 8, 8))
    b = by_member(found, ("b.weight", 0))  # the first half of cat([b, c]) feeds mix
    assert ("mix.weight", 1) in b.members and ("c.weight", 0) in b.members  # gated by the second half
    for u in range(len(b)):
        assert b.units[u][("b.weight", 0)].tolist() == b.units[u][("mix.weight", 1)].tolist()


def test_in_place_and_reflected_operators_couple_like_the_plain_ones():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.a(x) + self.b(x) * 2)

    class Operators(Plain):
        def forward(self, x):
            h = self.a(x)
            h += 2 * self.b(x)  # Tensor.__iadd__, Tensor.__rmul__
            return self.out(h.T.T)  # the getter of Tensor.T

    x = torch.randn(3, 4)
    plain = [(sorted(g.members), g.prunable) for g in grouped(Plain(), x)]
    assert [(sorted(g.members), g.prunable) for g in grouped(Operators(), x)] == plain
    assert ([("a.bias", 0), ("a.weight", 0), ("b.bias", 0), ("b.weight", 0), ("out.weight", 1)], True) in plain


def test_rules_are_found_by_the_function_object():
    assert OPS[torch.cat].family == OPS[torch.Tensor.view].family == "index"
    assert OPS[torch.Tensor.__radd__].family == OPS[torch.Tensor.__iadd__].family == OPS[torch.Tensor.add].family
    assert OPS[torch.Tensor.add].family == "elementwise"
    assert OPS[torch.Tensor.T.__get__].family == "index"
    assert OPS[F.relu].family == OPS[torch.relu_].family == "identity"
    assert OPS[F.linear] == ("linear", "rule") and OPS[torch.Tensor.__getitem__] == ("getitem", "rule")
    assert OPS[torch.Tensor.shape.__get__].family == "ignore"
    assert torch.fft.fft not in OPS  # unknown: what it touches is pinned (test_groups)
    assert set(RULES) == RULED and all(f in OPS for name in RULED for f in functions(name))
    assert MACS[F.linear] is MACS[torch._C._nn.linear] and torch.conv2d in MACS and torch.add not in MACS


def test_modes_and_buffers_are_restored():
    model = Residual()
    model.train()
    model.fc2.eval()  # a mixed state must come back as it was, module by module
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
    before = snapshot(model)
    trace(model, torch.randn(3, 4))  # runs train mode too: batch norm statistics move, then come back
    assert_unchanged(model, before)
    assert model.training and not model.fc2.training and model.bn.training


def test_preserved_restores_even_when_the_run_fails():
    model = Residual()
    before = snapshot(model)
    with pytest.raises(RuntimeError), preserved(model):
        model.eval()
        model.bn.running_var.fill_(3.0)
        raise RuntimeError("inside")
    assert_unchanged(model, before)


@pytest.mark.parametrize("bad", [torch.randn(3, 5), None, (torch.randn(3, 4), torch.randn(3, 4)),
                                 {"y": torch.randn(3, 4)}])
def test_inputs_that_do_not_run_the_model_raise_value_error_naming_example_inputs(bad):
    model = Residual()
    before = snapshot(model)
    with pytest.raises(ValueError, match="example_inputs do not run the model"):
        trace(model, bad)
    assert_unchanged(model, before)


def test_positional_and_keyword_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 6)

        def forward(self, x, y):
            return self.a(x) * self.b(y)

    model = Two()
    x, y = torch.randn(2, 4), torch.randn(2, 3)
    for example in ((x, y), [x, y], {"x": x, "y": y}):
        found = grouped(model, example)
        out = by_member(found, ("a.weight", 0))
        assert ("b.weight", 0) in out.members and out.reason == "model output"
