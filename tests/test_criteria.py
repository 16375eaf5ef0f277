"""prunekit.criteria: what each built-in criterion scores, how criteria are resolved, what they may
touch. Scores are checked against their formulas, computed here independently of the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.criteria import (
    CRITERIA,
    L2,
    Criterion,
    FunctionCriterion,
    Magnitude,
    Random,
    ScoreContext,
    Taylor,
    Wanda,
    check_scores,
    get_criterion,
)
from prunekit.inputs import Labeled
from prunekit.targets import find_targets
from tests.helpers import Net, assert_unchanged, snapshot

KNOWN = ["l1", "l2", "magnitude", "random", "taylor", "wanda"]


def mlp(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Dropout(dropout), nn.ReLU(), nn.Linear(10, 3))


def scores_of(crit: Criterion, model: nn.Module, data=None, loss_fn=None, include=None) -> dict[str, torch.Tensor]:
    """``{fqn: scores}`` the way ``prune`` asks for them: prepare once, then score each target."""
    targets = find_targets(model, include)
    crit.prepare(model, targets, data, loss_fn)
    return {t.fqn: crit.score(t.param.detach(), crit.context(t)) for t in targets}


# unique magnitudes (no ties to break), random signs, nothing that squares to zero or infinity
weights = st.integers(2, 40).flatmap(
    lambda n: st.tuples(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True),
                        st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n))
).map(lambda ms: torch.tensor(np.array(ms[0]) * np.array(ms[1]) / 997.0, dtype=torch.float32))


def linear_with(w: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(w.numel(), 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w.reshape(1, -1))
    return layer


# ---- get_criterion ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("magnitude", Magnitude), ("l1", Magnitude), ("L1", Magnitude),
                                       ("Magnitude", Magnitude), ("l2", L2), ("random", Random),
                                       ("taylor", Taylor), ("WANDA", Wanda)])
def test_names_resolve_case_insensitively_to_fresh_instances(name, cls):
    crit = get_criterion(name)
    assert type(crit) is cls
    assert get_criterion(name) is not crit  # no state shared between two prune calls
    assert sorted(CRITERIA) == KNOWN


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="criterion='biggest' is unknown") as e:
        get_criterion("biggest")
    assert all(repr(k) in str(e.value) for k in KNOWN)


def test_a_value_that_is_no_criterion_is_a_type_error_naming_the_forms():
    with pytest.raises(TypeError, match="got int") as e:
        get_criterion(3)
    assert all(repr(k) in str(e.value) for k in KNOWN) and "prunekit.Criterion" in str(e.value)


def test_criterion_instances_pass_through_and_classes_are_instantiated():
    crit = Random(seed=7)
    assert get_criterion(crit) is crit
    assert type(get_criterion(Taylor)) is Taylor

    class Cubed(Criterion):
        name = "abs3"

        def score(self, weight, context):
            return weight.abs() ** 3

    made = get_criterion(Cubed)
    assert isinstance(made, Cubed) and made.name == "abs3"


def test_a_plain_function_is_wrapped_called_with_weight_and_context_and_named():
    calls = []

    def negative(weight, context):
        calls.append((weight, context))
        return -weight

    crit = get_criterion(negative)
    assert isinstance(crit, FunctionCriterion) and crit.fn is negative
    assert crit.name == "negative" and repr(crit) == "FunctionCriterion(negative)"
    w, ctx = torch.randn(3, 4), ScoreContext("fc.weight", nn.Linear(4, 3), "weight")
    assert torch.equal(crit.score(w, ctx), -w) and calls[0][0] is w and calls[0][1] is ctx


def test_a_callable_object_without_a_name_is_called_custom():
    class Scorer:
        def __call__(self, weight, context):
            return weight.abs()

    crit = get_criterion(Scorer())
    assert isinstance(crit, FunctionCriterion) and crit.name == "custom"


def test_the_base_class_scores_nothing_until_a_subclass_says_how():
    with pytest.raises(NotImplementedError):
        Criterion().score(torch.ones(2, 2), ScoreContext("w", nn.Linear(2, 2), "weight"))
    assert repr(Criterion()) == "Criterion()" and repr(Random(seed=4)) == "Random(seed=4)"


# ---- ScoreContext ----------------------------------------------------------------------------


def test_score_context_defaults_and_its_extra_dict_is_not_shared():
    module = nn.Linear(2, 2)
    a, b = ScoreContext("fc.weight", module, "weight"), ScoreContext("fc.weight", module, "weight")
    assert (a.fqn, a.module, a.name, a.grad, a.extra) == ("fc.weight", module, "weight", None, {})
    a.extra["n"] = 1
    assert b.extra == {}


def test_prune_hands_each_criterion_call_its_target_and_the_masked_weight():
    model = Net()
    seen = {}

    def record(weight, context):
        seen[context.fqn] = (weight.clone(), context)
        return weight.abs()

    pk.prune(model, 0.5, scope="layer")
    first = {n: model.get_submodule(n).weight.detach().clone() for n in ("conv", "fc1", "fc2")}
    pk.prune(model, 0.7, criterion=record, scope="layer")
    assert sorted(seen) == ["conv.weight", "fc1.weight", "fc2.weight"]
    for fqn, (weight, ctx) in seen.items():
        module = fqn.split(".")[0]
        assert ctx.module is model.get_submodule(module) and ctx.name == "weight" and ctx.grad is None
        assert torch.equal(weight, first[module])  # the effective weight: what the first prune removed reads 0
        assert int((weight == 0).sum()) == round(0.5 * weight.numel())


def test_prepare_runs_once_before_any_scoring_with_what_prune_was_given():
    events = []

    class Watching(Criterion):
        def prepare(self, model, targets, data, loss_fn):
            events.append(("prepare", model, [t.fqn for t in targets], data, loss_fn))

        def score(self, weight, context):
            events.append(("score", context.fqn))
            return weight.abs()

    model, data, loss_fn = Net(), [torch.randn(2, 3, 4, 4)], nn.MSELoss()
    pk.prune(model, 0.5, criterion=Watching(), data=data, loss_fn=loss_fn)
    assert events[0] == ("prepare", model, ["conv.weight", "fc1.weight", "fc2.weight"], data, loss_fn)
    assert events[1:] == [("score", "conv.weight"), ("score", "fc1.weight"), ("score", "fc2.weight")]


def test_a_context_override_reaches_score():
    class Tagged(Criterion):
        def context(self, target):
            ctx = super().context(target)
            ctx.extra["rows"] = torch.arange(target.param.shape[0], dtype=torch.float32)
            return ctx

        def score(self, weight, context):
            return context.extra["rows"][:, None].expand_as(weight).clone()  # keep the last rows

    model = nn.Linear(4, 8)
    pk.prune(model, 0.5, criterion=Tagged())
    assert bool((model.weight[:4] == 0).all()) and bool((model.weight[4:] != 0).all())


# ---- magnitude and l2 ------------------------------------------------------------------------


@given(w=weights)
def test_magnitude_scores_abs_and_l2_scores_the_square(w):
    ctx = ScoreContext("w", nn.Linear(1, 1), "weight")
    assert torch.equal(Magnitude().score(w, ctx), w.abs())
    assert torch.equal(L2().score(w, ctx), w * w)


@given(w=weights, sparsity=st.sampled_from([0.25, 0.5, 0.75]))
def test_magnitude_prunes_exactly_the_smallest_abs_values_and_l2_prunes_the_same(w, sparsity):
    by_l1, by_l2 = linear_with(w), linear_with(w)
    pk.prune(by_l1, sparsity, criterion="magnitude")
    pk.prune(by_l2, sparsity, criterion="l2")
    n_pruned = round(sparsity * w.numel())
    expected = torch.ones(w.numel(), dtype=torch.bool)
    expected[w.abs().argsort()[:n_pruned]] = False
    assert torch.equal((by_l1.weight != 0).flatten(), expected)
    assert torch.equal(by_l2.weight != 0, by_l1.weight != 0)


def test_channels_are_ranked_by_l1_norm_under_magnitude_and_l2_norm_under_l2():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0, 0.0, 0.0],     # L1 3, L2 3
                                         [1.0, 1.0, 1.0, 1.0]]))  # L1 4, L2 2
    by_l1, by_l2 = nn.Linear(4, 2, bias=False), nn.Linear(4, 2, bias=False)
    by_l1.load_state_dict(layer.state_dict())
    by_l2.load_state_dict(layer.state_dict())
    pk.prune(by_l1, 0.5, pattern="channel", criterion="magnitude")
    pk.prune(by_l2, 0.5, pattern="channel", criterion="l2")
    assert bool((by_l1.weight[0] == 0).all()) and bool((by_l1.weight[1] != 0).all())
    assert bool((by_l2.weight[1] == 0).all()) and by_l2.weight[0, 0] == 3.0


# ---- random ----------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1))
def test_random_is_reproducible_under_its_seed_and_restarts_at_prepare(seed):
    shapes = [(3, 5), (7,), (2, 2, 3)]
    ctx = ScoreContext("w", nn.Linear(1, 1), "weight")
    a, b = Random(seed), Random(seed)
    a.prepare(None, [], None, None)
    first = [a.score(torch.zeros(s), ctx) for s in shapes]
    second = [b.score(torch.zeros(s), ctx) for s in shapes]  # never prepared: seeds itself at first use
    a.prepare(None, [], None, None)
    again = [a.score(torch.zeros(s), ctx) for s in shapes]
    for x, y, z, s in zip(first, second, again, shapes):
        assert x.shape == s and torch.equal(x, y) and torch.equal(x, z)
        assert bool(((x >= 0) & (x < 1)).all())
    other = Random(seed + 1)
    assert not torch.equal(other.score(torch.zeros(3, 5), ctx), first[0])


def test_random_masks_depend_on_the_seed_not_on_the_weights():
    def mask(seed, weight_seed):
        torch.manual_seed(weight_seed)
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        pk.prune(model, 0.5, criterion=Random(seed))
        return [model[0].weight != 0, model[2].weight != 0]

    same, other_weights, other_seed = mask(3, 0), mask(3, 1), mask(4, 0)
    assert all(torch.equal(a, b) for a, b in zip(same, other_weights))
    assert not all(torch.equal(a, b) for a, b in zip(same, other_seed))
    torch.manual_seed(123)  # the global generator plays no part
    assert all(torch.equal(a, b) for a, b in zip(same, mask(3, 0)))


# ---- taylor ----------------------------------------------------------------------------------


def reference_grads(model: nn.Module, batches, loss_fn) -> list[torch.Tensor]:
    """Sum of dL/dw of every Linear weight over the batches, in eval mode, on a copy."""
    import copy

    ref = copy.deepcopy(model).eval()
    weights = [m.weight for m in ref.modules() if isinstance(m, nn.Linear)]
    loss = sum(loss_fn(ref(b.inputs), b.target) for b in batches)
    return list(torch.autograd.grad(loss, weights))


def test_taylor_from_labeled_data_scores_abs_of_weight_times_the_summed_gradient():
    model = mlp(dropout=0.5).train()  # in train mode dropout would make the gradients random
    data = [Labeled(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(3)]
    loss_fn = nn.CrossEntropyLoss()
    grads = reference_grads(model, data, loss_fn)
    crit = Taylor()
    got = scores_of(crit, model, data, loss_fn)
    targets = find_targets(model)
    for t, g in zip(targets, grads):
        ctx = crit.context(t)
        assert torch.allclose(ctx.grad, g, atol=1e-6)
        assert torch.allclose(got[t.fqn], (t.param.detach() * g).abs(), atol=1e-6)


def test_taylor_with_batches_without_a_target_calls_loss_fn_on_the_output_alone():
    model = mlp()
    data = [torch.randn(4, 6), torch.randn(4, 6)]
    got = scores_of(Taylor(), model, data, lambda out: out.square().mean())
    ref = mlp().eval()
    g = torch.autograd.grad(sum(ref(x).square().mean() for x in data), ref[0].weight)[0]
    assert torch.allclose(got["0.weight"], (ref[0].weight * g).abs(), atol=1e-6)


def test_taylor_reads_a_plain_pair_as_inputs_and_target_with_a_future_warning():
    model = mlp()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    loss_fn = nn.CrossEntropyLoss()
    labeled = scores_of(Taylor(), model, [Labeled(x, y)], loss_fn)
    with pytest.warns(FutureWarning, match="prunekit.inputs.labeled"):
        plain = scores_of(Taylor(), model, [(x, y)], loss_fn)
    assert all(torch.equal(labeled[k], plain[k]) for k in labeled)


def test_taylor_with_data_leaves_modes_weights_buffers_and_grads_as_they_were():
    model = Net().train()
    model.fc2.eval()  # a mixed state, which model.train()/eval() alone would not restore
    model(torch.randn(2, 3, 4, 4)).sum().backward()  # existing .grad must survive untouched
    before = snapshot(model)
    data = [Labeled(torch.randn(2, 3, 4, 4), torch.tensor([1, 5]))]
    scores_of(Taylor(), model, data, nn.CrossEntropyLoss())
    assert_unchanged(model, before)  # BatchNorm running stats included


def test_taylor_without_data_uses_a_copy_of_the_existing_grad():
    model = mlp()
    model(torch.randn(4, 6)).sum().backward()
    grad = model[0].weight.grad.clone()
    crit = Taylor()
    targets = find_targets(model)
    crit.prepare(model, targets, None, None)
    model[0].weight.grad.mul_(0)  # an optimizer's zero_grad() after prepare must not change the scores
    assert torch.equal(crit.score(model[0].weight.detach(), crit.context(targets[0])),
                       (model[0].weight.detach() * grad).abs())


def test_taylor_without_data_or_gradients_names_the_weights_and_both_ways_out():
    model = mlp()
    with pytest.raises(ValueError, match=r"needs gradients: pass data=.*loss\.backward\(\)") as e:
        Taylor().prepare(model, find_targets(model), None, None)
    assert "'0.weight'" in str(e.value) and "'3.weight'" in str(e.value)


def test_taylor_refuses_empty_data_and_a_target_it_has_no_gradient_for():
    model = mlp()
    with pytest.raises(ValueError, match="data is empty: criterion='taylor'"):
        Taylor().prepare(model, find_targets(model), [], nn.MSELoss())
    with pytest.raises(ValueError, match="no gradient for 'fc.weight'"):
        Taylor().score(torch.ones(2, 2), ScoreContext("fc.weight", nn.Linear(2, 2), "weight"))


def test_a_batch_that_does_not_run_the_model_is_named_by_its_index():
    model = mlp()
    data = [Labeled(torch.randn(2, 6), torch.tensor([0, 1])), Labeled(torch.randn(2, 5), torch.tensor([0, 1]))]
    with pytest.raises(ValueError, match="data batch 1 does not run the model"):
        Taylor().prepare(model, find_targets(model), data, nn.CrossEntropyLoss())


# ---- wanda -----------------------------------------------------------------------------------


def test_wanda_scores_abs_weight_times_the_input_feature_norm_over_all_rows_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Dropout(0.5), nn.ReLU(), nn.Linear(10, 3)).train()
    data = [torch.randn(3, 4, 6) * torch.linspace(0.1, 3, 6), torch.randn(5, 6)]  # tokens count as rows
    crit = Wanda()
    got = scores_of(crit, model, data)
    x0 = torch.cat([d.reshape(-1, 6) for d in data])
    with torch.no_grad():
        x3 = torch.relu(model[0](x0))  # eval mode: dropout is identity
    for fqn, x, layer in (("0.weight", x0, model[0]), ("3.weight", x3, model[3])):
        norm = x.square().sum(0).sqrt()
        assert torch.allclose(got[fqn], layer.weight.detach().abs() * norm[None, :], rtol=1e-5)
    assert torch.allclose(crit.context(find_targets(model)[0]).extra["input_norm"], x0.square().sum(0).sqrt())


def test_wanda_leaves_the_model_as_it_was_and_no_hook_behind():
    model = Net().train()
    model.bn.eval()
    before = snapshot(model)
    scores_of(Wanda(), model, [torch.randn(2, 3, 4, 4)], include=["fc1", "fc2"])
    assert_unchanged(model, before)
    assert all(not m._forward_hooks for m in model.modules())


def test_wanda_removes_its_hooks_when_a_batch_fails():
    model = mlp()
    with pytest.raises(ValueError, match="data batch 1 does not run the model"):
        Wanda().prepare(model, find_targets(model), [torch.randn(2, 6), torch.randn(2, 5)], None)
    assert all(not m._forward_hooks for m in model.modules())


def test_wanda_scores_linear_weights_only():
    model = Net()
    with pytest.raises(ValueError, match=r"scores Linear weights only; exclude \['conv.weight'\]"):
        Wanda().prepare(model, find_targets(model), [torch.randn(2, 3, 4, 4)], None)
    with pytest.raises(ValueError, match=r"Linear weights only; exclude \['fc1.bias'\]"):
        Wanda().prepare(model, find_targets(model, "fc1.bias"), [torch.randn(2, 3, 4, 4)], None)
    before = snapshot(model)
    with pytest.raises(ValueError, match="Linear weights only"):
        pk.prune(model, 0.5, criterion="wanda", data=[torch.randn(2, 3, 4, 4)])
    assert_unchanged(model, before)  # a rejected prune attaches no mask


def test_wanda_needs_data_and_statistics():
    model = mlp()
    with pytest.raises(ValueError, match="criterion='wanda' needs data="):
        Wanda().prepare(model, find_targets(model), None, None)
    with pytest.raises(ValueError, match="data is empty: criterion='wanda'"):
        Wanda().prepare(model, find_targets(model), [], None)
    with pytest.raises(ValueError, match="no input statistics for 'fc.weight'"):
        Wanda().score(torch.ones(2, 2), ScoreContext("fc.weight", nn.Linear(2, 2), "weight"))


# ---- check_scores ----------------------------------------------------------------------------


def test_check_scores_returns_detached_float32_and_names_bad_returns():
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = check_scores(w * 2, w, "fc.weight", "twice")
    assert out.dtype == torch.float32 and not out.requires_grad and torch.allclose(out, (w * 2).float())
    with pytest.raises(ValueError, match=r"criterion 'sum' returned \(\) for 'fc.weight'.*shape \(3, 4\)"):
        check_scores(w.sum(), w, "fc.weight", "sum")
    with pytest.raises(ValueError, match="returned list"):
        check_scores([1.0], w, "fc.weight", "list")
    with pytest.raises(ValueError, match="NaN scores for 'fc.weight'"):
        check_scores(w * float("nan"), w, "fc.weight", "nan")
