"""Masks: deepcopy, state_dict, torch.compile, finalize, training keeps zeros, apply/adopt."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

import prunekit as pk
from tests.helpers import Net, assert_unchanged, nonzeros, snapshot


def _pruned(sparsity=0.8, **kw):
    torch.manual_seed(0)
    model = Net()
    pk.prune(model, sparsity, **kw)
    return model


def test_deepcopy_of_a_pruned_model_is_independent(x):
    model = _pruned()
    clone = copy.deepcopy(model)
    assert torch.equal(clone(x), model(x))
    pk.prune(clone, 0.95)
    assert nonzeros(clone) < nonzeros(model)
    assert pk.sparsity_report(model).sparsity == pytest.approx(0.8, abs=1e-3)


def test_finalize_on_a_deepcopy_leaves_the_original_working(x):
    """torch 2.14 trap: the copy shares the generated class; removing on it broke the original."""
    model = _pruned()
    out = model(x)
    clone = copy.deepcopy(model)
    pk.finalize(clone)
    assert type(clone.fc1) is nn.Linear
    assert parametrize.is_parametrized(model.fc1, "weight")
    assert torch.equal(model(x), out) and torch.equal(clone(x), out)
    # and a new mask on the copy of another tensor does not leak back either
    clone2 = copy.deepcopy(model)
    pk.prune(clone2, 0.5, include="*.bias", scope="layer")
    assert not parametrize.is_parametrized(model.fc1, "bias")
    assert torch.equal(model(x), out)


def test_state_dict_round_trip_between_pruned_models(x):
    model = _pruned()
    other = _pruned(0.3)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other(x), model(x))
    assert all(torch.equal(a, b) for a, b in zip(pk.masks(other).values(), pk.masks(model).values()))


def test_torch_compile_matches_eager(x):
    model = _pruned().eval()
    compiled = torch.compile(model, backend="aot_eager")
    assert torch.allclose(compiled(x), model(x), atol=1e-6)
    pk.prune(model, 0.95)  # mask buffers change in place: the compiled model sees the new masks
    assert torch.allclose(compiled(x), model(x), atol=1e-6)
    assert nonzeros(model) < nonzeros(_pruned())


def test_torch_compile_default_backend_matches_eager(x):
    model = _pruned().eval()
    compiled = torch.compile(model)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_finalize_bakes_zeros_keeps_parameter_identity_and_outputs(x):
    model = _pruned().eval()
    out = model(x)
    original = model.fc1.parametrizations.weight.original
    nz = nonzeros(model)
    pk.finalize(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert model.fc1.weight is original
    assert nonzeros(model) == nz
    assert torch.equal(model(x), out)
    assert sorted(model.state_dict()) == sorted(Net().state_dict())


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adam", "adamw-wd"],
)
def test_training_keeps_pruned_weights_at_zero(make_opt, x):
    model = _pruned(0.9)
    masks = pk.masks(model)
    nz = nonzeros(model)
    opt = make_opt(model.parameters())
    model.train()
    for step in range(20):
        loss = model(x + step * 0.01).pow(2).mean()
        loss.backward()
        if step % 2:  # gradient accumulation over two micro-batches
            opt.step()
            opt.zero_grad()
    assert nonzeros(model) <= nz
    for name, mask in masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert bool((module.weight[~mask] == 0).all())
    pk.finalize(model)
    assert nonzeros(model) <= nz


def test_eval_cache_follows_in_place_updates(x):
    model = _pruned().eval()
    with torch.no_grad():
        first = model(x)
        model.fc2.parametrizations.weight.original.mul_(2)
        second = model(x)
    assert not torch.equal(first, second)
    assert torch.equal(second, pk.finalize(copy.deepcopy(model))(x).detach())


def test_masked_equals_finalized_in_train_and_eval(x):
    model = _pruned()
    final = pk.finalize(copy.deepcopy(model))
    for mode in (True, False):
        model.train(mode)
        final.train(mode)
        assert torch.equal(model(x), final(x))


def test_apply_masks_transfers_masks_exactly():
    model = _pruned()
    fresh = Net()
    pk.apply_masks(fresh, pk.masks(model))
    for name, mask in pk.masks(model).items():
        assert torch.equal(pk.masks(fresh)[name], mask)
    assert pk.sparsity_report(fresh).sparsity == pytest.approx(pk.sparsity_report(model).sparsity, abs=0.01)


@pytest.mark.parametrize(
    "bad, error, words",
    [
        ({"fc1.weight": torch.ones(3, 3, dtype=torch.bool)}, ValueError, "shape \\(3, 3\\)"),
        ({"fc9.weight": torch.ones(2, dtype=torch.bool)}, KeyError, "no parameter 'fc9.weight'"),
        ({"fc2.weight": torch.full((8, 32), 0.5)}, ValueError, "bool or 0/1"),
        ([1, 2], TypeError, "dict"),
    ],
)
def test_apply_masks_rejects_bad_masks_and_changes_nothing(bad, error, words):
    model = _pruned()
    before = snapshot(model)
    ok = {"conv.weight": torch.zeros(8, 3, 3, 3, dtype=torch.bool)}
    with pytest.raises(error, match=words):
        pk.apply_masks(model, {**ok, **bad} if isinstance(bad, dict) else bad)
    assert_unchanged(model, before)


def test_from_torch_prune_adopts_masks_and_keeps_outputs(x):
    torch.manual_seed(0)
    model = Net().eval()
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.6)
    torch_prune.ln_structured(model.conv, "weight", amount=0.5, n=2, dim=0)
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.5)  # a PruningContainer
    expected_mask = model.fc1.weight_mask.bool().clone()
    out = model(x)
    pk.from_torch_prune(model)
    assert not hasattr(model.fc1, "weight_orig") and not hasattr(model.fc1, "weight_mask")
    assert not model.fc1._forward_pre_hooks and not model.conv._forward_pre_hooks
    assert torch.equal(pk.masks(model)["fc1.weight"], expected_mask)
    assert torch.equal(model(x), out)
    with pytest.raises(ValueError, match="no torch.nn.utils.prune masks"):
        pk.from_torch_prune(model)


def test_criterion_returning_the_weight_itself_does_not_modify_it():
    model = _pruned(0.5)
    before = model.fc1.parametrizations.weight.original.clone()
    pk.prune(model, 0.6, criterion=lambda w, ctx: w)
    assert torch.equal(model.fc1.parametrizations.weight.original, before)


@pytest.mark.parametrize("pattern", ["channel", "block:4x4", "block:8x1"])
def test_expanded_masks_can_be_pruned_again_reapplied_loaded_and_resumed(pattern, tmp_path, x):
    """Channel and row-spanning block masks were stride-0 views: every later write to them failed."""
    model = _pruned(0.5, pattern=pattern, include=[nn.Linear])
    assert all(pm.is_contiguous() for pm in pk.masks(model).values())
    twin = _pruned(0.5, pattern=pattern, include=[nn.Linear])
    pk.prune(model, 0.75, pattern=pattern, include=[nn.Linear])  # pruning again writes into the masks
    pk.apply_masks(twin, pk.masks(model), pattern=pattern)
    assert torch.equal(twin.fc1.parametrizations.weight[0].mask, model.fc1.parametrizations.weight[0].mask)
    twin.load_state_dict(model.state_dict())  # resuming into a pruned twin
    assert torch.equal(twin(x), model(x))
    pk.save(model, tmp_path / "m.pk")
    loaded = pk.load(tmp_path / "m.pk", _pruned(0.5, pattern=pattern, include=[nn.Linear]))
    assert nonzeros(loaded) == nonzeros(model)


def test_masked_state_dict_uses_plain_names_and_round_trips_bit_for_bit(x):
    model = _pruned()
    state = model.state_dict()
    assert "fc1.weight" in state and "fc1.weight_mask" in state
    assert not any(".parametrizations." in k for k in state)
    assert torch.equal(state["fc1.weight"], model.fc1.weight.detach())  # masked values, zeros included
    assert state["fc1.weight"].data_ptr() == model.fc1.parametrizations.weight.original.data_ptr()  # live
    plain = Net()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert not missing and sorted(unexpected) == sorted(k for k in state if k.endswith("_mask"))
    assert torch.equal(plain(x), model(x))
    live = model.state_dict(keep_vars=True)  # the live parameters, under the same plain names
    assert live["fc1.weight"] is model.fc1.parametrizations.weight.original
    legacy = {k.replace("fc1.weight_mask", "fc1.parametrizations.weight.0.mask"): v for k, v in state.items()}
    legacy["fc1.parametrizations.weight.original"] = legacy.pop("fc1.weight")
    other = _pruned(0.3)
    other.load_state_dict(legacy)  # checkpoints written with torch's parametrization names still load
    assert torch.equal(other(x), model(x))
    pk.finalize(model)
    assert sorted(model.state_dict()) == sorted(Net().state_dict())


def test_state_dict_values_are_the_live_weights_so_an_ema_copy_updates(x):
    """timm's ModelEmaV2 copies model.state_dict() values into ema.state_dict() values in place."""
    model = _pruned()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        model.fc1.parametrizations.weight.original.add_(1.0)
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        e.copy_(m)
    assert torch.equal(ema.fc1.weight, model.fc1.weight) and torch.equal(ema(x), model(x))
    assert nonzeros(ema) == nonzeros(model)  # zeros stayed zeros through the copy
