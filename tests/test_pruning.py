"""prunekit.prune: exact counts, scopes, patterns, composition, ties, and rejected calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from tests.helpers import Net, Tied, assert_unchanged, snapshot


def _mlp(seed=0, sizes=((12, 16), (16, 8), (8, 4))):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(i, o) for i, o in sizes])


def _weights(model):
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _zeros(model):
    return sum(int((w == 0).sum()) for w in _weights(model))


@given(s=st.floats(0.0, 0.99), seed=st.integers(0, 5))
def test_global_prunes_exactly_round_s_times_n(s, seed):
    model = _mlp(seed)
    n = sum(w.numel() for w in _weights(model))
    pk.prune(model, s)
    assert _zeros(model) == round(s * n)


@given(s=st.floats(0.0, 0.99))
def test_layer_scope_gives_each_layer_its_exact_share(s):
    model = _mlp()
    pk.prune(model, s, scope="layer")
    for w in _weights(model):
        assert int((w == 0).sum()) == round(s * w.numel())


def test_global_magnitude_prunes_the_smallest_weights_across_layers():
    model = _mlp()
    with torch.no_grad():
        model[0].weight.mul_(10)  # the first layer's weights are all large: global keeps them
    originals = [w.detach().clone() for w in _weights(model)]
    pk.prune(model, 0.5)
    pruned = torch.cat([o[w == 0].abs() for o, w in zip(originals, _weights(model))])
    kept = torch.cat([o[w != 0].abs() for o, w in zip(originals, _weights(model))])
    assert pruned.max() <= kept.min()
    assert float((model[0].weight == 0).float().mean()) < 0.5 < float((model[1].weight == 0).float().mean())


def test_ties_are_broken_by_position_in_model_order():
    model = _mlp()
    with torch.no_grad():
        for w in _weights(model):
            w.fill_(1.0)
    pk.prune(model, 0.5)
    n = sum(w.numel() for w in _weights(model))
    k = round(0.5 * n)
    flat = torch.cat([w.detach().flatten() for w in _weights(model)])
    assert torch.equal(flat[:k], torch.zeros(k)) and bool((flat[k:] == 1).all())


def test_pruning_again_composes_and_sparsity_is_the_total():
    model = _mlp()
    pk.prune(model, 0.5)
    first = pk.masks(model)
    report = pk.prune(model, 0.8)
    assert report.nonzeros == report.numel - round(0.8 * report.numel)
    for name, mask in pk.masks(model).items():
        assert not bool((mask & ~first[name]).any()), "a pruned weight came back"


def test_asking_for_less_than_already_pruned_is_refused_and_changes_nothing():
    model = _mlp()
    pk.prune(model, 0.8)
    before = snapshot(model)
    with pytest.raises(ValueError, match="already pruned"):
        pk.prune(model, 0.5)
    assert_unchanged(model, before)


def test_original_values_stay_under_the_mask():
    model = _mlp()
    w0 = model[0].weight.detach().clone()
    pk.prune(model, 0.9)
    assert torch.equal(model[0].parametrizations.weight.original, w0)
    assert int((model[0].weight == 0).sum()) > 0


def test_emptying_a_whole_layer_warns():
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    with pytest.warns(UserWarning, match="removed every weight of \\['2.weight'\\]"):
        pk.prune(model, 0.2)
    assert int((model[2].weight != 0).sum()) == 0


def test_dict_sparsity_per_glob_later_keys_override():
    model = _mlp()
    pk.prune(model, {"*": 0.5, "2": 0.25})
    assert int((model[0].weight == 0).sum()) + int((model[1].weight == 0).sum()) == round(
        0.5 * (model[0].weight.numel() + model[1].weight.numel())
    )
    assert int((model[2].weight == 0).sum()) == round(0.25 * model[2].weight.numel())


def test_dict_sparsity_leaves_unmatched_layers_alone():
    model = _mlp()
    pk.prune(model, {"1": 0.5})
    assert int((model[0].weight == 0).sum()) == 0 and int((model[1].weight == 0).sum()) == 64


def test_include_exclude_forms():
    model = Net()
    report = pk.prune(model, 0.5, include=nn.Linear)
    assert {r.name for r in report.rows if r.pattern != "-"} == {"fc1.weight", "fc2.weight"}
    model = Net()
    report = pk.prune(model, 0.5, exclude=lambda m, fqn: fqn.startswith("fc"))
    assert {r.name for r in report.rows if r.pattern != "-"} == {"conv.weight"}
    model = Net()
    pk.prune(model, 0.5, include=["fc1", "*.bias"], scope="layer")
    assert int((model.fc1.bias == 0).sum()) == 16 and int((model.conv.bias == 0).sum()) == 4
    assert int((model.conv.weight == 0).sum()) == 0


# ---- patterns -------------------------------------------------------------------------------


@given(n=st.integers(1, 3), extra=st.integers(1, 3), rows=st.integers(1, 6), groups=st.integers(1, 5))
def test_n_m_keeps_exactly_n_of_every_m_along_the_input_dim(n, extra, rows, groups):
    m = n + extra
    torch.manual_seed(0)
    layer = nn.Linear(m * groups, rows)
    report = pk.prune(layer, pattern=f"{n}:{m}")
    kept = (layer.weight != 0).reshape(rows, groups, m).sum(-1)
    assert bool((kept == n).all())
    assert report.sparsity == pytest.approx(1 - n / m)


@given(cin=st.sampled_from([4, 8, 12]), k=st.integers(1, 3), cout=st.integers(1, 4))
def test_n_m_on_conv_runs_along_input_channels(cin, k, cout):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k)
    pk.prune(conv, pattern="2:4")
    kept = (conv.weight != 0).permute(0, 2, 3, 1).reshape(-1, cin // 4, 4).sum(-1)
    assert bool((kept == 2).all())


def test_n_m_sparsity_must_match_when_given():
    layer = nn.Linear(8, 4)
    before = snapshot(layer)
    with pytest.raises(ValueError, match="sparsity 0.5"):
        pk.prune(layer, 0.7, pattern="2:4")
    assert_unchanged(layer, before)
    pk.prune(layer, 0.5, pattern="2:4")
    assert int((layer.weight == 0).sum()) == 16


@given(
    r=st.integers(1, 3), c=st.integers(1, 4), br=st.integers(1, 4), bc=st.integers(1, 4), s=st.floats(0, 0.95)
)
def test_blocks_are_kept_or_pruned_whole_with_exact_block_count(r, c, br, bc, s):
    torch.manual_seed(0)
    layer = nn.Linear(c * bc, r * br)
    pk.prune(layer, s, pattern=f"block:{br}x{bc}")
    tiles = (layer.weight != 0).reshape(r, br, c, bc).permute(0, 2, 1, 3).reshape(r * c, -1)
    assert bool((tiles.all(1) | ~tiles.any(1)).all())
    assert int((~tiles.any(1)).sum()) == round(s * r * c)


def test_block_ranking_follows_the_criterion_norm():
    # block A: one big weight (L1 = 4, L2² = 16); block B: four medium (L1 = 6, L2² = 9)
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 0, 0, 0, 1.5, 1.5, 1.5, 1.5]]))
    l1 = pk.prune(layer, 0.5, pattern="block:1x4", criterion="magnitude")
    assert l1.nonzeros == 4 and float(layer.weight.detach()[0, 0]) == 0.0
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 0, 0, 0, 1.5, 1.5, 1.5, 1.5]]))
    pk.prune(layer, 0.5, pattern="block:1x4", criterion="l2")
    assert float(layer.weight.detach()[0, 0]) == 4.0 and float(layer.weight.detach()[0, 4]) == 0.0


def test_channel_pattern_masks_whole_output_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 10, 3)
    pk.prune(conv, 0.3, pattern="channel")
    alive = (conv.weight != 0).flatten(1)
    assert bool((alive.all(1) | ~alive.any(1)).all()) and int((~alive.any(1)).sum()) == 3
    assert conv.weight.shape == (10, 4, 3, 3)


def test_global_channels_across_layers_of_different_fan_in():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8))
    report = pk.prune(model, 0.5, pattern="channel")
    for w in _weights(model):
        alive = (w != 0)
        assert bool((alive.all(1) | ~alive.any(1)).all())
    assert report.sparsity == pytest.approx(0.5, abs=8 / 96)


# ---- criteria -------------------------------------------------------------------------------


def test_random_is_reproducible_by_seed():
    masks = []
    for seed in (3, 3, 4):
        model = _mlp()
        pk.prune(model, 0.5, criterion=pk.criteria.Random(seed))
        masks.append(pk.masks(model))
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert any(not torch.equal(masks[0][k], masks[2][k]) for k in masks[0])


def test_custom_function_and_subclass_criteria():
    model = _mlp()
    w = model[0].weight.detach().clone()
    pk.prune(model, 0.5, criterion=lambda weight, ctx: -weight.abs(), include="0")
    kept = w[model[0].weight != 0].abs()
    pruned = w[model[0].weight == 0].abs()
    assert kept.max() <= pruned.min()

    class ByRow(pk.Criterion):
        name = "by_row"

        def score(self, weight, context):
            assert context.fqn == "0.weight"
            return torch.arange(weight.shape[0], dtype=torch.float32)[:, None].expand_as(weight)

    model = _mlp()
    pk.prune(model, 0.5, criterion=ByRow(), include="0")
    assert bool((model[0].weight[:8] == 0).all()) and bool((model[0].weight[8:] != 0).all())


def test_taylor_from_data_matches_w_times_grad_and_leaves_grads_and_bn_alone(x):
    torch.manual_seed(0)
    model = Net()
    y = torch.tensor([1, 3])
    loss_fn = nn.CrossEntropyLoss()
    data = [pk.inputs.Labeled(x, y), pk.inputs.Labeled(x * 0.5, y)]
    ref = Net()
    ref.load_state_dict(model.state_dict())
    ref.eval()
    grads = torch.autograd.grad(sum(loss_fn(ref(a), b) for a, b in data), ref.fc1.weight)[0]
    expected = (ref.fc1.weight * grads).abs()
    running = model.bn.running_mean.clone()
    pk.prune(model, 0.5, criterion="taylor", include="fc1", data=data, loss_fn=loss_fn)
    kept = expected[model.fc1.weight != 0]
    pruned = expected[model.fc1.weight == 0]
    assert kept.min() >= pruned.max()
    assert model.fc1.parametrizations.weight.original.grad is None
    assert torch.equal(model.bn.running_mean, running) and model.training


def test_taylor_uses_existing_grad_and_refuses_without_any(x):
    model = Net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="taylor"):
        pk.prune(model, 0.5, criterion="taylor")
    assert_unchanged(model, before)
    model(x).sum().backward()
    report = pk.prune(model, 0.5, criterion="taylor")
    assert report.nonzeros == report.numel - round(0.5 * report.numel)


# ---- ties -----------------------------------------------------------------------------------


def test_tied_weights_are_pruned_once_and_stay_tied():
    torch.manual_seed(0)
    model = Tied()
    report = pk.prune(model, 0.5, include=[nn.Linear, nn.Embedding])
    assert [r.name for r in report.rows].count("emb.weight") == 1
    assert "head.weight" not in [r.name for r in report.rows]
    assert torch.equal(model.emb.weight, model.head.weight)
    assert model.emb.parametrizations.weight.original is model.head.parametrizations.weight.original
    ids = torch.tensor([[1, 2, 3]])
    out = model(ids)
    pk.finalize(model)
    assert model.emb.weight is model.head.weight
    assert torch.equal(model(ids), out)


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"sparsity": 1.0}, ValueError, "sparsity=1.0 is outside"),
        ({"sparsity": -0.1}, ValueError, "outside"),
        ({"sparsity": "0.5"}, TypeError, "sparsity must be a number"),
        ({"sparsity": True}, TypeError, "sparsity must be a number"),
        ({"sparsity": float("nan")}, ValueError, "sparsity=nan is outside"),
        ({}, ValueError, "sparsity is required"),
        ({"sparsity": 0.5, "criterion": "bogus"}, ValueError, "'magnitude'"),
        ({"sparsity": 0.5, "pattern": "diagonal"}, ValueError, "'block:RxC'"),
        ({"sparsity": 0.5, "pattern": "4:2"}, ValueError, "1 <= N < M"),
        ({"sparsity": 0.5, "pattern": "block:0x4"}, ValueError, "block"),
        ({"sparsity": 0.5, "scope": "model"}, ValueError, "'layer'"),
        ({"pattern": "2:3"}, ValueError, "divisible by 3"),
        ({"sparsity": 0.5, "pattern": "block:3x1"}, ValueError, "does not tile"),
        ({"sparsity": 0.5, "include": "nothing.*"}, ValueError, r"include=.nothing.\*. matches no module"),
        ({"sparsity": 0.5, "exclude": "fc9"}, ValueError, "exclude=.fc9. matches no module"),
        ({"sparsity": 0.5, "include": nn.Embedding}, ValueError, "matched no parameters"),
        ({"sparsity": 0.5, "include": 42}, TypeError, "not understood"),
        ({"sparsity": {"fc9": 0.5}}, ValueError, "match no targeted parameter"),
        ({"sparsity": {"fc1": 1.5}}, ValueError, "sparsity\\['fc1'\\]"),
        ({"sparsity": 0.5, "criterion": lambda w, c: w.sum()}, ValueError, "shape"),
        ({"sparsity": 0.5, "criterion": lambda w, c: w * float("nan")}, ValueError, "NaN"),
        ({"sparsity": 0.5, "criterion": "taylor", "data": []}, ValueError, "data is empty"),
    ],
)
def test_bad_arguments_are_named_and_change_nothing(kwargs, error, words, net):
    before = snapshot(net)
    with pytest.raises(error, match=words):
        pk.prune(net, **kwargs)
    assert_unchanged(net, before)


def test_non_floating_parameter_is_refused():
    model = Net()
    model.register_parameter("steps", nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False))
    before = snapshot(model)
    with pytest.raises(ValueError, match="'steps' has dtype torch.int64"):
        pk.prune(model, 0.5, include="steps")
    assert_unchanged(model, before)


def test_rejected_call_on_a_pruned_model_changes_nothing():
    model = Net()
    pk.prune(model, 0.5)
    before = snapshot(model)
    with pytest.raises(ValueError):
        pk.prune(model, 0.9, pattern="block:3x3")
    assert_unchanged(model, before)


@given(
    s=st.one_of(st.floats(-1, 2), st.none()),
    pattern=st.sampled_from(["unstructured", "2:4", "1:3", "block:1x4", "block:2x2", "block:4x1", "channel", "x"]),
    scope=st.sampled_from(["global", "layer", "all"]),
    criterion=st.sampled_from(["magnitude", "l2", "random", "foo"]),
)
def test_fuzzed_arguments_either_give_valid_masks_or_change_nothing(s, pattern, scope, criterion):
    model = Net()
    before = snapshot(model)
    try:
        report = pk.prune(model, s, criterion=criterion, pattern=pattern, scope=scope)
    except (ValueError, TypeError):
        assert_unchanged(model, before)
        return
    assert 0.0 <= report.sparsity <= 1.0  # s close to 1 may round to every weight
    for name, mask in pk.masks(model).items():
        assert mask.dtype == torch.bool and mask.shape == dict(model.named_parameters())[
            name.replace(".weight", ".parametrizations.weight.original")
        ].shape


def test_layer_pruned_by_torch_prune_is_refused_by_name_and_counted_right():
    """pk.prune skipped such a layer (its tensor is weight_orig) and reported a wrong count."""
    model = Net()
    torch.nn.utils.prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    report = pk.sparsity_report(model)
    assert report["fc1.weight"].nonzeros == model.fc1.weight.numel() // 2
    assert report["fc1.weight"].pattern == "torch.nn.utils.prune"
    before = snapshot(model)
    with pytest.raises(ValueError, match="from_torch_prune"):
        pk.prune(model, 0.8)
    assert_unchanged(model, before)
    pk.from_torch_prune(model)
    pk.prune(model, 0.8)
    assert pk.sparsity_report(model).sparsity == pytest.approx(0.8, abs=1e-3)


def test_a_layer_left_nearly_empty_by_global_ranking_is_named():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # global magnitude ranking takes nearly all of this layer
    with pytest.warns(UserWarning, match="left \\['2.weight \\(9[0-9.]+% zeros\\)'\\] with under a tenth"):
        pk.prune(model, 0.5)
    kept = int(pk.masks(model)["2.weight"].sum())
    assert 0 < kept < 0.05 * 64 * 64


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5)])
def test_numpy_and_tensor_scalars_are_sparsities(value):
    model = Net()
    report = pk.prune(model, value, scope="layer")
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("fn", [pk.finalize, pk.masks, pk.sparsity_report, pk.from_torch_prune,
                                lambda m: pk.apply_masks(m, {})])
def test_non_modules_get_a_type_error_naming_the_argument(fn):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        fn({"weight": torch.ones(2)})


def test_calibration_data_that_does_not_run_the_model_is_named():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = snapshot(model)
    with pytest.raises(ValueError, match="data batch 1 does not run the model"):
        pk.prune(model, 0.5, criterion="wanda", data=[torch.randn(2, 8), torch.randn(2, 7)])
    assert_unchanged(model, before)
