"""oneshot (SparseGPT, Wanda, magnitude) on small random transformers built from configs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.patterns import NM
from prunekit.recipes import oneshot
from prunekit.recipes.oneshot import find_blocks, sparsegpt_prune, wanda_mask
from tests.helpers import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")


def llama(seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def calibration(n=4, vocab=96):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (4, 16), generator=g) for _ in range(n)]


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None), ("4:8", None)])
def test_exact_counts_valid_n_m_and_only_block_layers(method, pattern, sparsity):
    model = llama()
    head = model.lm_head.weight.detach().clone()
    report = oneshot(model, calibration(), method=method, sparsity=sparsity, pattern=pattern)
    pruned = [r for r in report.rows if r.pattern != "-"]
    assert len(pruned) == 14 and all(r.name.startswith("model.layers.") for r in pruned)
    assert torch.equal(model.lm_head.weight, head)
    s = 0.5 if sparsity is None else sparsity
    for r in pruned:
        assert r.numel - r.nonzeros == round(s * r.numel), r.name
    if pattern != "unstructured":
        n, m = map(int, pattern.split(":"))
        w = model.model.layers[1].mlp.down_proj.weight
        assert bool(((w != 0).reshape(w.shape[0], -1, m).sum(-1) == n).all())
    out = model(calibration(1)[0]).logits
    assert torch.isfinite(out).all()
    nz = pk.sparsity_report(model).nonzeros
    pk.finalize(model)
    assert pk.sparsity_report(model).nonzeros == nz


def test_bert_encoder_layers_are_found_and_pruned():
    model = bert()
    assert find_blocks(model)[0] == "encoder.layer"
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in calibration()]
    report = oneshot(model, batches, method="sparsegpt", sparsity=0.5)
    assert {r.name.split(".")[0] for r in report.rows if r.pattern != "-"} == {"encoder"}
    assert "pooler.dense.weight" in [r.name for r in report.rows if r.pattern == "-"]


def _layer_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1, 64)[torch.randperm(64, generator=g)]  # features of very different size
    mix = torch.randn(64, 64, generator=g) * 0.3 + torch.eye(64)
    x = (torch.randn(512, 64, generator=g) @ mix) * scale
    w = torch.randn(32, 64, generator=g)
    return w, x


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_and_wanda_reconstruct_better_than_magnitude(pattern):
    w, x = _layer_problem()
    pat = pk.patterns.get_pattern(pattern)
    hessian = 2 * x.T @ x / len(x)
    new, keep = sparsegpt_prune(w, hessian, 0.5, pat, blocksize=32)  # two lazy blocks
    assert int((~keep).sum()) == w.numel() // 2 and bool((new[~keep] == 0).all())
    wanda_keep = wanda_mask(w, x.square().sum(0).sqrt(), 0.5, pat)
    mag = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        mag.weight.copy_(w)
    pk.prune(mag, 0.5 if pattern == "unstructured" else None, pattern=pattern, scope="layer")
    ref = x @ w.T
    err_gpt = (x @ new.T - ref).norm()
    err_wanda = (x @ (w * wanda_keep).T - ref).norm()
    err_mag = (x @ mag.weight.detach().T - ref).norm()
    assert err_gpt < err_wanda < err_mag
    if isinstance(pat, NM):
        assert bool((keep.reshape(32, 16, 4).sum(-1) == 2).all())


def test_wanda_criterion_in_prune_matches_its_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    data = [torch.randn(10, 16) * torch.linspace(0.1, 3, 16) for _ in range(3)]
    norms = torch.stack([d.square().sum(0) for d in data]).sum(0).sqrt()
    expected = model[0].weight.detach().abs() * norms
    pk.prune(model, 0.5, criterion="wanda", data=data, include="0")
    keep = model[0].weight != 0
    assert expected[keep].min() >= expected[~keep].max()
    with pytest.raises(ValueError, match="needs data"):
        pk.prune(nn.Linear(4, 4), 0.5, criterion="wanda")


def test_model_without_blocks_falls_back_to_whole_model_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with pytest.warns(UserWarning, match="no repeated blocks"):
        report = oneshot(model, [torch.randn(8, 16) for _ in range(3)], method="sparsegpt", sparsity=0.5)
    assert report.sparsity == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"data": []}, ValueError, "data is empty"),
        ({"data": None}, ValueError, "needs data=<calibration batches>"),
        ({"data": [torch.randn(2, 16)]}, ValueError, "calibration batch 0 does not run the model"),
        ({"sparsity": 1.0}, ValueError, "sparsity=1.0 is outside"),
        ({"method": "obs"}, ValueError, "method='obs' is unknown"),
        ({"pattern": "block:1x4"}, ValueError, "'unstructured' and 'N:M'"),
        ({"pattern": "2:3", "sparsity": None}, ValueError, "divisible by 3"),
        ({"pattern": "2:4", "sparsity": 0.3}, ValueError, "always gives sparsity 0.5"),
        ({"layer_sparsity": "owl", "pattern": "2:4", "sparsity": None}, ValueError, "needs pattern='unstructured'"),
        ({"layer_sparsity": [0.5]}, ValueError, "1 values for the 2 blocks"),
        ({"layer_sparsity": [0.5, 1.2]}, ValueError, r"layer_sparsity\[1\]=1.2 is outside"),
        ({"layer_sparsity": "balanced"}, ValueError, "'uniform', 'owl' or one sparsity per block"),
        ({"layer_sparsity": "owl", "owl_lambda": 0.7}, ValueError, "owl_lambda=0.7"),
        ({"layer_sparsity": "owl", "method": "magnitude", "data": None}, ValueError, "with layer_sparsity='owl' needs data"),
    ],
)
def test_bad_input_changes_nothing(kwargs, error, words):
    model = llama()
    before = snapshot(model)
    args = {"data": calibration(), "method": "sparsegpt", "sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=words):
        oneshot(model, **args)
    assert_unchanged(model, before)


def test_non_contiguous_weights_prune_like_contiguous_ones():
    model, twin = llama(), llama()
    for m in (model.model.layers[1].mlp.up_proj,):
        m.weight = nn.Parameter(m.weight.detach().t().contiguous().t())  # same values, transposed storage
    assert not model.model.layers[1].mlp.up_proj.weight.is_contiguous()
    oneshot(model, calibration(), method="sparsegpt", sparsity=0.5)
    oneshot(twin, calibration(), method="sparsegpt", sparsity=0.5)
    for name, mask in pk.masks(twin).items():
        assert torch.equal(pk.masks(model)[name], mask), name


def test_a_failure_in_a_later_block_puts_the_earlier_blocks_back(monkeypatch):
    """All or nothing: SparseGPT changes weights block by block, so a late failure must undo them."""
    import sys

    module = sys.modules["prunekit.recipes.oneshot"]  # the package re-exports the function under this name
    model = llama()
    before = snapshot(model)
    real, calls = module.sparsegpt_prune, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:  # a layer of the second block
            raise RuntimeError("out of memory in the second block")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "sparsegpt_prune", flaky)
    with pytest.raises(RuntimeError, match="second block"):
        oneshot(model, calibration(), method="sparsegpt", sparsity=0.5)
    assert len(calls) == 10 and pk.masks(model) == {}
    assert_unchanged(model, before)


def test_a_singular_hessian_names_percdamp_and_changes_nothing():
    """Found by the fuzzer: percdamp=0 with fewer calibration rows than features raised LinAlgError."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match="raise percdamp"):
        with pytest.warns(UserWarning, match="no repeated blocks"):
            oneshot(model, [torch.randn(4, 16)] * 2, method="sparsegpt", sparsity=0.5, percdamp=0.0)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_replayed_blocks_do_not_share_the_decoders_key_value_cache(method):
    """A Llama forward hands each layer one DynamicCache; replaying it would let batch 2 attend to batch 1."""
    batches = calibration(3)
    with_cache, without = llama(), llama()
    oneshot(with_cache, [{"input_ids": b} for b in batches], method=method, sparsity=0.5)
    oneshot(without, [{"input_ids": b, "use_cache": False} for b in batches], method=method, sparsity=0.5)
    for (name, a), b in zip(with_cache.state_dict().items(), without.state_dict().values()):
        assert torch.equal(a, b), name


def _block_sparsities(model):
    out = []
    for block in model.model.layers:
        ws = [m.weight for m in block.modules() if isinstance(m, nn.Linear)]
        out.append(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))
    return out


def test_owl_gives_blocks_with_more_outliers_more_weights_and_averages_to_the_target():
    model = llama(layers=4)
    with torch.no_grad():  # the last block gets heavy outliers: a few of its weights 50x larger
        for lin in (m for m in model.model.layers[3].modules() if isinstance(m, nn.Linear)):
            lin.weight.view(-1)[::97] *= 50
    batches = calibration()
    before = snapshot(model)
    chosen = pk.recipes.owl_sparsities(model, batches, 0.6, owl_lambda=0.1)
    assert_unchanged(model, before)
    assert sum(chosen) / 4 == pytest.approx(0.6)
    assert max(chosen) - min(chosen) == pytest.approx(0.2)
    assert min(chosen) == chosen[3]
    oneshot(model, batches, method="wanda", sparsity=0.6, layer_sparsity="owl", owl_lambda=0.1)
    measured = _block_sparsities(model)
    assert measured == pytest.approx(chosen, abs=2e-3)  # exact counts per layer, up to rounding
    assert sum(measured) / 4 == pytest.approx(0.6, abs=2e-3)  # blocks are the same size


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_one_sparsity_per_block_is_applied_to_that_block(method):
    model = llama(layers=3)
    oneshot(model, calibration(), method=method, sparsity=0.5, layer_sparsity=[0.2, 0.5, 0.8])
    assert _block_sparsities(model) == pytest.approx([0.2, 0.5, 0.8], abs=2e-3)
    for name, mask in pk.masks(model).items():  # the masks say the same as the zeros
        assert int((~mask).sum()) == int((pk.finalize(copy.deepcopy(model)).get_parameter(name) == 0).sum()), name


def test_wanda_sorting_rows_in_chunks_gives_the_same_mask(monkeypatch):
    import sys

    module = sys.modules["prunekit.recipes.oneshot"]
    torch.manual_seed(0)
    weight, norms = torch.randn(37, 24), torch.rand(24)
    whole = wanda_mask(weight, norms, 0.55, pk.patterns.get_pattern("unstructured"))
    monkeypatch.setattr(module, "_SORT_ELEMENTS", 24 * 5)  # 5 rows at a time, the last chunk short
    assert torch.equal(wanda_mask(weight, norms, 0.55, pk.patterns.get_pattern("unstructured")), whole)
    assert int((~whole).sum()) == round(0.55 * weight.numel())


def test_owl_refuses_block_sparsities_outside_0_1_instead_of_clipping_them():
    model = llama(layers=4)
    with torch.no_grad():
        for lin in (m for m in model.model.layers[3].modules() if isinstance(m, nn.Linear)):
            lin.weight.view(-1)[::97] *= 50
    before = snapshot(model)
    with pytest.raises(ValueError, match="owl_lambda=0.2; every block must stay in"):  # the min block gets >= 0.9 + 0.2 / 2
        oneshot(model, calibration(), method="wanda", sparsity=0.9, layer_sparsity="owl", owl_lambda=0.2)
    assert_unchanged(model, before)


def test_wanda_keeps_earlier_zeros_pruned():
    torch.manual_seed(0)
    weight, norms = torch.randn(6, 16), torch.rand(16)
    old = torch.ones(6, 16, dtype=torch.bool)
    old[:, :8] = False  # half of every row already pruned, the largest scores among them
    weight[:, :8] *= 100
    keep = wanda_mask(weight, norms, 0.5, pk.patterns.get_pattern("unstructured"), old)
    assert not keep[:, :8].any() and keep[:, 8:].all()


def test_a_single_number_for_layer_sparsity_says_to_use_sparsity():
    with pytest.raises(TypeError, match="use sparsity="):
        oneshot(llama(), calibration(), method="wanda", sparsity=0.5, layer_sparsity=0.5)


def qwen2_sliding(seed=0):
    """Layer 0 full attention, layer 1 a 4-token sliding window: the model hands each its own mask."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert cfg.layer_types == ["full_attention", "sliding_attention"]
    return transformers.Qwen2ForCausalLM(cfg).eval()


def test_each_block_is_calibrated_with_its_own_attention_mask():
    """Reference: block 1's input norms from real forward passes of the model with block 0 pruned."""
    from prunekit._stats import InputStats

    model, twin = qwen2_sliding(), qwen2_sliding()
    batches = [{"input_ids": b} for b in calibration()]
    oneshot(model, batches, method="wanda", sparsity=0.5)
    oneshot(twin, batches, method="wanda", sparsity=0.5, include="model.layers.0")  # block 0 alone, as above
    block = twin.model.layers[1]
    layers = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    stats = {n: InputStats(m) for n, m in layers.items()}
    with torch.no_grad():
        for b in batches:
            twin(**b)
    got = pk.masks(model)
    for n, st in stats.items():
        st.remove()
        want = wanda_mask(layers[n].weight, st.norms(), 0.5, pk.patterns.get_pattern("unstructured"))
        assert torch.equal(got[f"model.layers.1.{n}.weight"], want), n
