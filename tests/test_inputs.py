"""prunekit.inputs: one rule for calling a model, the same in every function that takes inputs."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.inputs import Labeled, call, first_tensor, forward, labeled, loss, modes, split, threads


class TwoInputs(nn.Module):
    """A model of two positional inputs: the case a plain (x, y) pair used to get wrong."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def test_one_input_form_means_the_same_call_everywhere():
    model = TwoInputs().eval()
    x, y = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.equal(call(model, (x, y)), model(x, y))
    assert torch.equal(call(model, {"x": x, "y": y}), model(x, y))
    assert torch.equal(call(model.a, x), model.a(x))
    macs, _ = pk.count_macs_params(model, (x, y))
    assert macs == 2 * 2 * 8 * 4  # both layers ran: the tuple was two positional inputs
    result = pk.compare({"a": model, "b": model}, (x, y), repeats=1, min_block_s=0.0)
    assert result["b"].rel_err == 0.0


def test_calibration_batches_say_when_they_carry_a_target():
    """oneshot(m, [(x, y)]) read the pair as (inputs, target); Labeled makes either meaning explicit."""
    model = TwoInputs()
    x, y = torch.randn(2, 8), torch.randn(2, 8)
    out, target = forward(model, Labeled(inputs=(x, y)))
    assert torch.equal(out, model(x, y)) and target is None
    out, target = forward(model.a, Labeled(x, torch.tensor([1, 0])))
    assert torch.equal(out, model.a(x)) and torch.equal(target, torch.tensor([1, 0]))
    batch = {"input_ids": torch.ones(1, 3)}
    assert forward(lambda **kw: kw["input_ids"].sum(), batch)[1] is batch  # dicts carry their own labels


def test_a_plain_pair_keeps_its_old_meaning_for_now_with_a_warning():
    model = nn.Linear(8, 4)
    x, y = torch.randn(2, 8), torch.tensor([1, 2])
    with pytest.warns(FutureWarning, match=r"prunekit.inputs.labeled\(loader\)"):
        out, target = forward(model, (x, y))
    assert torch.equal(out, model(x)) and torch.equal(target, y)


def test_labeled_wraps_a_loader_and_can_be_iterated_again():
    loader = [(torch.randn(2, 8), torch.tensor([0, 1])) for _ in range(3)]
    data = labeled(loader)
    assert len(data) == 3
    first, second = list(data), list(data)
    assert all(isinstance(b, Labeled) for b in first) and len(second) == 3
    assert all(torch.equal(a.inputs, b[0]) for a, b in zip(first, loader))
    with pytest.raises(ValueError, match="batch 0 is a Tensor"):
        list(labeled([torch.randn(2, 8)]))


def test_taylor_with_labeled_batches_warns_nothing_and_matches_the_old_reading():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    b = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    b.load_state_dict(a.state_dict())
    pairs = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.prune(a, 0.5, criterion="taylor", data=labeled(pairs), loss_fn=nn.CrossEntropyLoss())
    with pytest.warns(FutureWarning):
        pk.prune(b, 0.5, criterion="taylor", data=pairs, loss_fn=nn.CrossEntropyLoss())
    assert all(torch.equal(pa, pb) for pa, pb in zip(pk.masks(a).values(), pk.masks(b).values()))


def test_loss_names_what_is_missing():
    model = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="loss_fn is required"):
        loss(model, torch.randn(2, 8), None)
    with pytest.raises(ValueError, match="scalar tensor"):
        loss(model, torch.randn(2, 8), lambda out: out)
    with pytest.raises(TypeError, match="Labeled"):
        forward(model, 3.0)


@settings(max_examples=30, deadline=None)
@given(flags=st.lists(st.booleans(), min_size=3, max_size=3), train=st.booleans())
def test_modes_restores_every_modules_own_flag(flags, train):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Sequential(nn.BatchNorm1d(2)))
    modules = [model, model[1], model[2][0]]
    for m, f in zip(modules, flags):
        m.training = f
    with modes(model, train=train):
        assert all(m.training == train for m in model.modules())
    assert [m.training for m in modules] == flags


def test_threads_restores_the_count_and_names_bad_values():
    before = torch.get_num_threads()
    with threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads=0 must be a positive int"):
        with threads(0):
            pass
    assert torch.get_num_threads() == before


def test_split_and_first_tensor():
    x = torch.ones(1)
    assert split(x) == ((x,), {}) and split([x, x]) == ((x, x), {}) and split({"a": x}) == ((), {"a": x})
    assert split(Labeled((x, x), 0)) == ((x, x), {})
    assert first_tensor(((x, 2), 3)) is x and first_tensor({"logits": x}) is x and first_tensor(None) is None
