"""prune_channels: equivalence when removed channels carry zero weight, budgets, criteria, bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.structured import HeadPrunedMultiheadAttention, UnitCriterion, count_macs_params, groups, prune_channels
from tests.helpers import assert_unchanged, snapshot
from tests.structured.common import Mixed


def zero_lowest(model, example, sparsity=0.5):
    """Zero every tensor slice of the units prune_channels will remove (the first of each group)."""
    removed = {}
    for g in groups(model, example):
        if not g.prunable:
            continue
        n = len(g) - int(round(len(g) * (1 - sparsity)))
        removed[id(g)] = n
        params = dict(model.named_parameters())
        with torch.no_grad():
            for unit in g.units[:n]:
                for (fqn, dim), idx in unit.items():
                    if fqn in params:
                        params[fqn].index_fill_(dim, torch.as_tensor(idx), 0.0)
    return removed


def outputs(model, example):
    model.eval()
    with torch.no_grad():
        if isinstance(example, dict):
            return model(**example).last_hidden_state
        return model(example)


def check_equivalent(model, example, atol=1e-5):
    zero_lowest(model, example)
    before = outputs(model, example)
    report = prune_channels(model, example, sparsity=0.5, criterion="l1", round_to=None)
    after = outputs(model, example)
    assert report.params[1] < report.params[0]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=atol)
    return report


def test_equivalent_cnn_with_residual_depthwise_cat_chunk_flatten():
    torch.manual_seed(0)
    model = Mixed()
    model.bn.running_mean.uniform_(-1, 1)
    check_equivalent(model, torch.randn(2, 3, 8, 8))
    assert model.dw.groups == model.dw.in_channels == model.dw.out_channels < 16
    assert model.fc.in_features == model.mix.out_channels // 2 * 16


def test_equivalent_resnet_block():
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BasicBlock(8, 16, stride=2, downsample=down),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    check_equivalent(model, torch.randn(2, 3, 8, 8))
    block = model[1]
    assert block.conv2.out_channels == block.downsample[0].out_channels == model[4].in_features == 8


def test_equivalent_vit_block_heads_and_mlp():
    from torchvision.models.vision_transformer import EncoderBlock

    torch.manual_seed(0)
    model = EncoderBlock(num_heads=4, hidden_dim=32, mlp_dim=64, dropout=0.0, attention_dropout=0.0)
    check_equivalent(model, torch.randn(2, 5, 32))
    attn = model.self_attention
    assert isinstance(attn, HeadPrunedMultiheadAttention)
    assert attn.num_heads == 2 and attn.in_proj_weight.shape == (3 * 2 * 8, 32) and attn.out_proj.in_features == 16
    assert model.mlp[0].out_features == 32


def test_equivalent_real_minilm_heads_and_ffn(minilm):
    model, example = minilm
    model = copy.deepcopy(model)
    report = check_equivalent(model, example, atol=2e-5)
    attn = model.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 6 and attn.all_head_size == 192 == attn.query.out_features
    assert model.encoder.layer[0].intermediate.dense.out_features == 768
    assert model.config.hidden_size == model.encoder.layer[0].output.dense.out_features == 384  # width kept
    assert report.macs_ratio > 1.3


def test_llama_gqa_keeps_the_query_to_key_value_ratio():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaModel(config).eval()
    example = {"input_ids": torch.randint(0, 64, (2, 7))}
    found = [g for g in groups(model, example) if g.kind == "heads" and g.prunable]
    assert len(found) == 2 and all(len(g) == 2 for g in found)  # one unit per key/value head
    check_equivalent(model, example)
    attn = model.layers[0].self_attn
    assert attn.q_proj.out_features == 4 * attn.head_dim and attn.k_proj.out_features == 1 * attn.head_dim
    assert attn.num_key_value_groups == 4


def test_round_to_keeps_multiples():
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    prune_channels(model, torch.randn(1, 3, 32, 32), sparsity=0.3, round_to=8)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels > 3:
            assert m.out_channels % 8 == 0 and m.in_channels % 8 == 0


@given(sparsity=st.floats(0.0, 0.95, exclude_max=True), round_to=st.sampled_from([None, 1, 4, 8]))
@settings(max_examples=15, deadline=None)
def test_any_sparsity_keeps_a_working_model(sparsity, round_to):
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(2, 3, 8, 8)
    prune_channels(model, x, sparsity=sparsity, round_to=round_to)
    assert model(x).shape == (2, 10)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels >= 1


@pytest.mark.slow
def test_target_macs_and_params():
    from torchvision.models import resnet18

    x = torch.randn(1, 3, 32, 32)
    model = resnet18(num_classes=10)
    macs0, params0 = count_macs_params(model, x)
    report = prune_channels(model, x, target_macs=0.5)
    assert report.macs[1] <= 0.5 * macs0 and report.macs[1] > 0.35 * macs0
    model = resnet18(num_classes=10)
    report = prune_channels(model, x, target_params=0.4)
    assert report.params[1] <= 0.4 * params0 and report.params[1] > 0.25 * params0
    model = resnet18(num_classes=10)
    report = prune_channels(model, x, target_macs=int(0.5 * macs0))  # an absolute count is an int
    assert report.macs[1] <= 0.5 * macs0 and report.macs[1] > 0.35 * macs0


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "fpgm", "random", "taylor"])
def test_criteria_pick_the_weak_channels(criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        weak = [1, 4, 6, 7]
        model[0].weight[weak] *= 1e-3
        model[1].weight[weak] *= 1e-3
        model[3].weight[:, weak] *= 1e-3
    x = torch.randn(2, 3, 6, 6)
    if criterion == "taylor":
        model(x).pow(2).sum().backward()
    before = model[0].weight.detach().clone()
    prune_channels(model, x, sparsity=0.5, criterion=criterion, round_to=None)
    assert model[0].out_channels == 4
    if criterion == "fpgm":  # keeps the channels farthest from the others: the strong ones here
        assert model[0].weight.abs().sum() > 0
    elif criterion != "random":
        strong = [i for i in range(8) if i not in weak]
        torch.testing.assert_close(model[0].weight, before[strong])


def test_random_depends_on_seed():
    shapes = []
    for seed in (0, 1):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 2, 1))
        w = model[0].weight.detach().clone()
        prune_channels(model, torch.randn(1, 3, 5, 5), sparsity=0.5, criterion="random", seed=seed, round_to=None)
        shapes.append([int(torch.nonzero((w == model[0].weight[i]).all(dim=(1, 2, 3)))[0]) for i in range(8)])
    assert shapes[0] != shapes[1]


def test_custom_unit_criterion():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    w = model[0].weight.detach().clone()
    prune_channels(model, torch.randn(3, 4), sparsity=0.5, round_to=None,
                   criterion=UnitCriterion(lambda m, g: torch.arange(len(g), 0, -1).float()))  # the last units go
    torch.testing.assert_close(model[0].weight, w[:3])


def test_a_plain_unit_function_still_works_with_a_deprecation_warning():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    w = model[0].weight.detach().clone()
    with pytest.warns(DeprecationWarning, match="UnitCriterion"):
        prune_channels(model, torch.randn(3, 4), sparsity=0.5, round_to=None,
                       criterion=lambda m, g: torch.arange(len(g), 0, -1).float())
    torch.testing.assert_close(model[0].weight, w[:3])


def test_global_scope_prunes_unevenly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    with torch.no_grad():
        model[0].weight[:24] *= 1e-3  # most of the first layer is weak
    prune_channels(model, torch.randn(2, 8), sparsity=0.5, scope="global", round_to=None)
    assert model[0].out_features < 16 < model[2].out_features


def test_exclude_keeps_module_channels():
    model = Mixed()
    prune_channels(model, torch.randn(1, 3, 8, 8), sparsity=0.5, exclude="stem")
    assert model.stem.out_channels == 16 and model.a.out_channels == 16  # coupled through the residual


def test_sparse_and_structured_training_keeps_zeros():
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(4, 3, 8, 8)
    prune_channels(model, x, sparsity=0.5)
    pruner = pk.Pruner(model, pk.schedules.OneShot(0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.step()
    zeros = pk.sparsity_report(model).nonzeros
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    assert pk.sparsity_report(model).nonzeros == zeros


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, "sparsity=1.0"),
    ({"sparsity": -0.1}, "sparsity=-0.1"),
    ({"sparsity": "half"}, "sparsity='half'"),
    ({}, "exactly one of"),
    ({"sparsity": 0.5, "target_macs": 0.5}, "exactly one of"),
    ({"target_macs": 0}, "target_macs=0"),
    ({"target_macs": 2.0}, "target_macs=2.0 must be a fraction to keep in \\(0, 1\\] as a float"),
    ({"target_params": 10 ** 12}, "more than the model has"),
    ({"sparsity": 0.5, "criterion": "magic"}, "criterion='magic'"),
    ({"sparsity": 0.5, "criterion": "wanda"}, "criterion='wanda' does not score channels"),
    ({"sparsity": 0.5, "scope": "model"}, "scope='model'"),
    ({"sparsity": 0.5, "round_to": 0}, "round_to=0"),
    ({"sparsity": 0.5, "max_sparsity": 1.0}, "max_sparsity=1.0"),
    ({"sparsity": 0.5, "exclude": "nope*"}, "exclude='nope\\*' matches no module"),
    ({"sparsity": 0.5, "include": "nope*"}, "include='nope\\*' matches no module"),
    ({"sparsity": 0.5, "include": nn.LSTM}, "matched no parameters"),
    ({"sparsity": 0.5, "include": 3}, "include/exclude item 3 is not understood"),
    ({"sparsity": 0.5, "unknown": 1}, "unexpected keyword argument 'unknown'"),
])
def test_bad_arguments_leave_the_model_unchanged(kwargs, match):
    model = Mixed()
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        prune_channels(model, torch.randn(1, 3, 8, 8), **kwargs)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.0}, "ratio=1.0"),  # errors name the argument as the caller spelled it
    ({"ratio": 0.5, "max_ratio": 1.0}, "max_ratio=1.0"),
    ({"ratio": 0.5, "sparsity": 0.5}, "got sparsity= and ratio="),
])
def test_bad_deprecated_arguments_are_named_as_given(kwargs, match):
    model = Mixed()
    before = snapshot(model)
    with pytest.warns(DeprecationWarning), pytest.raises((ValueError, TypeError), match=match):
        prune_channels(model, torch.randn(1, 3, 8, 8), **kwargs)
    assert_unchanged(model, before)


def test_inputs_that_do_not_run_the_model():
    model = Mixed()
    before = snapshot(model)
    with pytest.raises(ValueError, match="example_inputs do not run the model"):
        prune_channels(model, torch.randn(1, 5, 8, 8), sparsity=0.5)
    assert_unchanged(model, before)


def test_taylor_without_gradients_says_how():
    model = Mixed()
    before = snapshot(model)
    with pytest.raises(ValueError, match="loss.backward"):
        prune_channels(model, torch.randn(1, 3, 8, 8), sparsity=0.5, criterion="taylor")
    assert_unchanged(model, before)


def test_masked_model_must_be_finalized_first():
    model = Mixed()
    pk.prune(model, 0.5)
    with pytest.raises(ValueError, match="finalize"):
        prune_channels(model, torch.randn(1, 3, 8, 8), sparsity=0.5)


class HardCoded(nn.Module):
    """A module whose forward hard-codes its width: prunekit must keep it, not break it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(h.view(-1, 16).relu())


def test_hard_coded_widths_are_kept_with_a_reason():
    model = HardCoded()
    x = torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = prune_channels(model, x, sparsity=0.5, round_to=None)
    assert model(x).shape == (2, 3)
    assert model.a.out_features == 16 and report.kept_by_module




def test_equivalent_transposed_conv_and_embedding():
    torch.manual_seed(0)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 16)
            self.up = nn.ConvTranspose2d(16, 12, 2, stride=2)
            self.out = nn.Conv2d(12, 3, 1)

        def forward(self, ids):
            x = self.emb(ids).permute(0, 3, 1, 2)  # (B, 16, H, W)
            return self.out(torch.relu(self.up(x)))

    model = Decoder()
    check_equivalent(model, torch.randint(0, 10, (2, 3, 3)))
    assert model.emb.embedding_dim == model.up.in_channels == 8 and model.up.out_channels == model.out.in_channels == 6


def test_group_norm_keeps_its_groups_even():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    x = torch.randn(2, 3, 6, 6)
    prune_channels(model, x, sparsity=0.5, round_to=None)
    assert model[1].num_channels == model[0].out_channels == 8 and model[1].num_groups == 4
    assert model(x).shape == (2, 4, 6, 6)


def test_a_budget_that_cannot_be_reached_is_said():
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    with pytest.warns(UserWarning, match="target_params=1000 asks for 1,000 but .* remain: max_sparsity=0.9"):
        prune_channels(model, torch.randn(1, 3, 32, 32), target_params=1000)


def test_deprecated_ratio_and_max_ratio_warn_and_prune_as_the_new_names():
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    old, new = Mixed(), None
    new = copy.deepcopy(old)
    with pytest.warns(DeprecationWarning, match=r"prune_channels\(ratio=...\) is deprecated .* use sparsity=") as seen:
        with pytest.warns(DeprecationWarning, match=r"max_ratio=...\) is deprecated .* use max_sparsity="):
            report_old = prune_channels(old, x, ratio=0.8, max_ratio=0.3, round_to=None, progress=False)
    assert all(w.filename == __file__ for w in seen)  # the warning points at the caller
    report_new = prune_channels(new, x, sparsity=0.8, max_sparsity=0.3, round_to=None, progress=False)
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    assert report_old.layers == report_new.layers and report_old.sparsity == report_new.sparsity == 0.8
    assert old.stem.out_channels == 12  # max_sparsity=0.3 bounds the 0.8 asked: ceil(16 * 0.7) kept
    with pytest.warns(DeprecationWarning, match="StructuredReport.ratio is deprecated"):
        assert report_old.ratio == 0.8


def test_the_report_is_a_dataclass_of_declared_fields_and_counts_what_each_group_kept():
    import dataclasses

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    report = prune_channels(model, torch.randn(2, 4), sparsity=0.5, round_to=None, progress=False)
    assert dataclasses.is_dataclass(report)
    assert set(vars(report)) == {f.name for f in dataclasses.fields(report)}
    kept = {g.members[0]: n for g, n in report.groups}
    assert kept[("0.bias", 0)] == 4 == model[0].out_features  # the hidden group kept 4 of 8
    assert kept[("2.bias", 0)] == 2  # the output group, pinned, kept all
    assert "sparsity=0.500" in str(report)


def test_progress_shows_on_stderr_only_when_asked(capsys):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    prune_channels(model, torch.randn(2, 4), sparsity=0.5, round_to=None, progress=False)
    assert capsys.readouterr().err == ""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    prune_channels(model, torch.randn(2, 4), target_params=0.5, round_to=None)
    assert "prune_channels" in capsys.readouterr().err
