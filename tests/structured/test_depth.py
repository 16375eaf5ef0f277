"""drop_blocks: depth pruning by block influence, leaving a valid Hugging Face model."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.structured import block_influence, drop_blocks
from tests.helpers import assert_unchanged, snapshot
from tests.recipes.test_oneshot import bert, calibration, llama

transformers = pytest.importorskip("transformers")


def with_idle_block(index=2, layers=5):
    """A Llama whose block ``index`` adds nothing to the residual stream (its output projections are 0)."""
    model = llama(layers=layers)
    with torch.no_grad():
        model.model.layers[index].self_attn.o_proj.weight.zero_()
        model.model.layers[index].mlp.down_proj.weight.zero_()
    return model


def test_an_idle_block_has_zero_influence_and_goes_first():
    model = with_idle_block()
    scores = block_influence(model, calibration())
    assert scores[2] == pytest.approx(0.0, abs=1e-6) and min(s for i, s in enumerate(scores) if i != 2) > 1e-3
    ids = calibration(1)[0]
    before = model(ids).logits
    report = drop_blocks(model, calibration(), sparsity=0.2)  # 1 of 5
    assert report.removed == [2] and (report.blocks_before, report.blocks_after) == (5, 4)
    torch.testing.assert_close(model(ids).logits, before)  # removing an idle block changes nothing


def test_the_result_saves_loads_and_generates_without_prunekit(tmp_path):
    model = llama(layers=5)
    model.config.layer_types = ["full_attention"] * 5
    drop_blocks(model, which=[0, 3])
    assert model.config.num_hidden_layers == 3 and len(model.config.layer_types) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = calibration(1)[0]
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    prompt = torch.tensor([[1, 2, 3]])
    cached = loaded.generate(prompt, max_new_tokens=5, do_sample=False)  # the KV cache indexes layers by layer_idx
    uncached = loaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_an_encoder_loses_layers_too():
    model = bert()
    ids = calibration(1)[0]
    report = drop_blocks(model, [{"input_ids": ids}], sparsity=0.5)
    assert len(model.encoder.layer) == 1 == model.config.num_hidden_layers and len(report.influence) == 2
    assert model(ids).last_hidden_state.shape == (4, 16, 32)


def test_zeros_of_a_sparse_model_survive_dropping_blocks():
    model = llama(layers=4)
    pk.recipes.oneshot(model, calibration(), method="wanda", sparsity=0.5)
    zeros = {n: int((~m).sum()) for n, m in pk.masks(model).items() if not n.startswith("model.layers.1.")}
    drop_blocks(model, which=[1])
    renamed = {n.replace("layers.2.", "layers.1.").replace("layers.3.", "layers.2."): z for n, z in zeros.items()}
    assert {n: int((~m).sum()) for n, m in pk.masks(model).items()} == renamed


@pytest.mark.parametrize("kwargs, words", [
    ({}, "give sparsity= .* or which="),
    ({"sparsity": 0.2, "which": [1]}, "not both"),
    ({"sparsity": 0.2, "data": None}, "needs data="),
    ({"sparsity": 1.0}, "sparsity=1.0 is outside"),
    ({"sparsity": 0.2, "data": []}, "data is empty"),
    ({"which": [0, 0]}, "distinct block indices"),
    ({"which": [5]}, r"in \[0, 4\]"),
    ({"which": [0, 1, 2, 3, 4]}, "leaves none"),
])
def test_bad_input_changes_nothing(kwargs, words):
    model = llama(layers=5)
    before, layers = snapshot(model), model.config.num_hidden_layers
    args = {"data": calibration(), **kwargs}
    with pytest.raises(ValueError, match=words):
        drop_blocks(model, **args)
    assert_unchanged(model, before)
    assert len(model.model.layers) == 5 == model.config.num_hidden_layers == layers


def test_a_model_without_blocks_says_what_it_has():
    with pytest.raises(ValueError, match="no repeated blocks"):
        drop_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)), which=[0])


def test_a_config_that_plans_layers_by_index_is_refused_and_the_model_put_back():
    """Qwen2-MoE picks dense or expert MLPs by layer index (mlp_only_layers): renumbering breaks that."""
    torch.manual_seed(0)
    cfg = transformers.Qwen2MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                                      shared_expert_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                      mlp_only_layers=[1])
    model = transformers.Qwen2MoeForCausalLM(cfg).eval()
    before, blocks = snapshot(model), list(model.model.layers)
    with pytest.raises(ValueError, match="config no longer builds the same layers"):
        drop_blocks(model, which=[0])
    assert list(model.model.layers) == blocks and model.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    assert_unchanged(model, before)
