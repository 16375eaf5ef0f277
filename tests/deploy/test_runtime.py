"""Sparse CPU runtime: outputs equal dense within fp32 rounding, measured choice, fallbacks, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.deploy import (
    SparseConv2d,
    SparseLinear,
    SparseLinearInt8,
    semi_structured,
    sparse_runtime,
    to_sparse_runtime,
)
from prunekit.deploy.kernels import load

kernels = load()
needs_kernels = pytest.mark.skipif(kernels is None, reason="C++ kernels could not be built here")
needs_vnni = pytest.mark.skipif(kernels is None or not kernels.has_vnni(), reason="no AVX-512 VNNI on this CPU")


def _sparse_linear(out_f, in_f, sparsity, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    if sparsity > 0:
        pk.prune(lin, sparsity)
        pk.finalize(lin)
    return lin


@needs_kernels
@settings(max_examples=30, deadline=None)
@given(out_f=st.integers(1, 70), in_f=st.integers(1, 70), tokens=st.integers(1, 40), lead=st.booleans(),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99]), bias=st.booleans(), seed=st.integers(0, 50))
def test_sparse_linear_matches_dense_for_random_shapes(out_f, in_f, tokens, lead, sparsity, bias, seed):
    lin = _sparse_linear(out_f, in_f, sparsity, seed, bias)
    sparse = SparseLinear(lin, kernels)
    x = torch.randn((2, tokens, in_f) if lead else (tokens, in_f), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref, out = lin(x), sparse(x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max())))


def _tiles(module):
    return (8, 16, 32) if module.isa() == "avx512" else (8, 16)


def assert_every_tile_matches_dense(module, out_f, in_f, tokens, sparsity, seed):
    lin = _sparse_linear(out_f, in_f, sparsity, seed)
    sparse = SparseLinear(lin, module)
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = lin(x)
    for tile in _tiles(module):
        out = module.spmm_tiles(sparse.chunks, sparse.indptr, sparse.indices, sparse.values, x, sparse.bias, tile)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max()))), tile


@needs_kernels
@settings(max_examples=15, deadline=None)
@given(out_f=st.integers(1, 300), in_f=st.integers(1, 200), tokens=st.integers(2, 100),
       sparsity=st.sampled_from([0.5, 0.9, 0.97]), seed=st.integers(0, 50))
def test_every_tile_of_this_build_matches_dense(out_f, in_f, tokens, sparsity, seed):
    # sizes past the serial threshold run on the thread pool; odd sizes hit the partial-tile and
    # partial-16-row edges of the register transposes
    assert_every_tile_matches_dense(kernels, out_f, in_f, tokens, sparsity, seed)


@needs_kernels
@pytest.mark.parametrize("tokens", [64, 70, 300])  # token tiles of 32 (16): 2 (4) even, 3 (5) uneven, 10 (19) many
def test_threads_split_tiles_or_rows_and_every_token_matches_dense(tokens):
    # large enough for the thread pool; with 2 threads the kernels split token tiles when they go
    # round evenly or are many (64, 300 tokens), else rows (70): each split must cover every output
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_every_tile_matches_dense(kernels, 300, 200, tokens, 0.9, tokens)
        if kernels.has_vnni():
            lin = _sparse_linear(300, 200, 0.9, seed=tokens)
            x = torch.randn(tokens, 200, generator=torch.Generator().manual_seed(tokens))
            with torch.no_grad():
                out, ref = SparseLinearInt8(lin, kernels)(x), _int8_reference(lin, x)
            assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max())))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@needs_kernels
def test_portable_build_matches_dense_and_is_chosen_by_the_variable(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_KERNELS", "portable")
    portable = load()
    assert portable is not None and portable.isa() == "portable" and _tiles(portable) == (8, 16)
    for out_f, in_f, tokens, seed in [(384, 384, 128, 0), (37, 91, 19, 1), (300, 64, 3, 2)]:
        assert_every_tile_matches_dense(portable, out_f, in_f, tokens, 0.9, seed)
    assert not portable.has_vnni() and portable.has_conv()
    with pytest.raises(RuntimeError, match="AVX-512 VNNI"):
        SparseLinearInt8(_sparse_linear(8, 8, 0.5), portable)
    # the portable convolution: partial pixel tiles, padding, stride, dilation, batches; one past the
    # serial threshold so that it runs on the thread pool
    for geometry in [(3, 5, 3, 1, 1, 1, 7, 9, 0, True), (4, 8, 3, 2, 1, "same", 10, 10, 3, False),
                     (6, 7, 5, 3, 2, 2, 19, 13, 1, True), (64, 64, 3, 1, 1, 1, 28, 28, 1, True)]:
        if geometry[5] == "same":
            geometry = geometry[:3] + (1,) + geometry[4:]
        assert_conv_matches_dense(portable, *geometry, sparsity=0.9, seed=1)
    monkeypatch.setenv("PRUNEKIT_KERNELS", "avx2")
    with pytest.raises(ValueError, match="PRUNEKIT_KERNELS='avx2'.*portable"):
        load()


@needs_kernels
def test_runtime_measures_each_layer_and_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 8)).eval()
    pk.prune(model, 0.9, exclude="4", scope="layer")
    x = torch.randn(64, 256)
    fast, report = to_sparse_runtime(model, x, threads=2, repeats=3)
    assert [r["name"] for r in report.rows] == ["0", "2", "4"]
    assert report.rows[2]["reason"].startswith("below min_sparsity") and type(fast[4]) is nn.Linear
    for r in report.rows[:2]:
        assert r["tokens"] == 64 and r["dense_us"] > 0 and r["sparse_us"] > 0
        assert r["sparse"] == (r["sparse_us"] < r["dense_us"])
        assert (type(fast.get_submodule(r["name"])) is SparseLinear) == r["sparse"]
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), rtol=1e-5, atol=1e-5)
    assert pk.masks(model)  # the original keeps its masks: the runtime worked on a copy
    assert "run sparse" in str(report)


@needs_kernels
def test_sparse_layers_are_inference_only():
    sparse = SparseLinear(_sparse_linear(8, 8, 0.5), kernels)
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse(torch.randn(2, 8, requires_grad=True))


def test_model_without_sparse_layers_is_returned_unchanged_with_a_warning():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.warns(UserWarning, match="no Linear or Conv2d layer has >= 50% zeros"):
        out, _ = to_sparse_runtime(model, torch.randn(1, 8))
    assert type(out[0]) is nn.Linear and torch.equal(out[0].weight, model[0].weight)
    with pytest.raises(ValueError, match="min_sparsity=1.5"):
        to_sparse_runtime(model, min_sparsity=1.5)


def test_unsupported_dtype_stays_dense_with_the_reason():
    model = nn.Sequential(nn.Linear(8, 8)).double()
    pk.prune(model, 0.9)
    with pytest.warns(UserWarning):
        out, out_report = to_sparse_runtime(model, torch.randn(1, 8, dtype=torch.float64))
    assert "float32" in out_report.rows[0]["reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_semi_structured_path_says_what_it_needs():
    with pytest.raises(RuntimeError, match="compute capability >= 8.0"):
        semi_structured(nn.Linear(8, 8))


def test_int8_option_measures_a_third_kernel_and_keeps_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64)).eval()
    pk.prune(model, 0.9, scope="layer", include="0")  # layer 2 stays dense: an int8-only candidate
    x = torch.randn(64, 256)
    fast, fast_report = to_sparse_runtime(model, x, threads=2, repeats=3, int8=True)
    rows = {r["name"]: r for r in fast_report.rows}
    assert rows["0"]["int8_us"] > 0 and rows["2"]["int8_us"] > 0 and rows["2"]["sparse_us"] is None
    for name, r in rows.items():
        times = {k: r[f"{k}_us"] for k in ("dense", "sparse", "int8", "sparse_int8") if r[f"{k}_us"] is not None}
        assert r["choice"] == min(times, key=times.get)
        layer = fast.get_submodule(name)
        if r["choice"] == "sparse_int8":
            assert bool((layer.int8_weight()[model.get_submodule(name).weight.detach() == 0] == 0).all())
        if r["choice"] == "int8":
            q = layer.weight().int_repr()
            assert bool((q[model.get_submodule(name).weight.detach() == 0] == 0).all())  # zeros stay zero
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05


def _int8_reference(lin, x):
    """The same arithmetic as the VNNI kernel, in PyTorch: per-row int8 weights, per-token int8 inputs."""
    w = lin.weight.detach()
    ws = w.abs().amax(1) / 127
    ws = torch.where(ws > 0, ws, torch.ones_like(ws))
    wq = (w / ws[:, None]).round().clamp(-127, 127)
    xs = x.abs().amax(1) / 127
    xs = torch.where(xs > 0, xs, torch.ones_like(xs))
    xq = (x * (1 / xs)[:, None]).round()
    y = (xq.double() @ wq.double().T).float() * ws * xs[:, None]
    return y + lin.bias.detach() if lin.bias is not None else y


@needs_vnni
@settings(max_examples=25, deadline=None)
@given(out_f=st.integers(1, 200), groups=st.integers(1, 60), extra=st.integers(0, 3), tokens=st.integers(1, 80),
       pattern=st.sampled_from(["unstructured", "block:1x4"]), sparsity=st.sampled_from([0.5, 0.9]),
       bias=st.booleans(), seed=st.integers(0, 50))
def test_sparse_int8_equals_int8_arithmetic_and_keeps_zeros(out_f, groups, extra, tokens, pattern, sparsity, bias, seed):
    in_f = groups * 4 + (extra if pattern == "unstructured" else 0)
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    pk.prune(lin, sparsity, pattern=pattern)
    pk.finalize(lin)
    layer = SparseLinearInt8(lin, kernels)
    q = layer.int8_weight()
    assert q.shape == lin.weight.shape and bool((q[lin.weight == 0] == 0).all())  # zeros stay zero
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out, ref = layer(x), _int8_reference(lin, x)
        dense = lin(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max())))
    assert float((out - dense).abs().max()) <= 0.05 * max(1e-3, float(dense.abs().max()))


@needs_vnni
def test_int8_runtime_measures_the_sparse_int8_kernel_on_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(384, 1536), nn.GELU(), nn.Linear(1536, 384)).eval()
    pk.prune(model, 0.9, pattern="block:1x4")
    x = torch.randn(128, 384)
    fast, fast_report = to_sparse_runtime(model, x, threads=2, repeats=3, int8=True)
    for r in fast_report.rows:
        times = {k: r[f"{k}_us"] for k in ("dense", "sparse", "int8", "sparse_int8")}
        assert all(t > 0 for t in times.values())
        assert r["choice"] == min(times, key=times.get)
        assert (type(fast.get_submodule(r["name"])) is SparseLinearInt8) == (r["choice"] == "sparse_int8")
    assert "sp.int8 us" in str(fast_report)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05


@needs_kernels
@settings(max_examples=40, deadline=None)
@given(cin=st.integers(1, 20), cout=st.integers(1, 40), k=st.integers(1, 5), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), padding=st.sampled_from([0, 1, 2, "same", "valid"]), h=st.integers(1, 20),
       w=st.integers(1, 20), batch=st.sampled_from([0, 1, 3]), bias=st.booleans(),
       sparsity=st.sampled_from([0.5, 0.9]), seed=st.integers(0, 50))
def test_sparse_conv_matches_dense_for_random_geometry(cin, cout, k, stride, dilation, padding, h, w, batch, bias,
                                                       sparsity, seed):
    if padding == "same":
        stride = 1  # torch allows 'same' only with stride 1
    pad = dilation * (k - 1) if padding == "same" else (0 if padding == "valid" else 2 * padding)
    if h + pad < dilation * (k - 1) + 1 or w + pad < dilation * (k - 1) + 1:
        return  # no output pixel: torch refuses these too
    assert_conv_matches_dense(kernels, cin, cout, k, stride, dilation, padding, h, w, batch, bias, sparsity, seed)


def assert_conv_matches_dense(module, cin, cout, k, stride, dilation, padding, h, w, batch, bias, sparsity, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias)
    pk.prune(conv, sparsity)
    pk.finalize(conv)
    sparse = SparseConv2d(conv, module)
    assert sparse.nnz == int(torch.count_nonzero(conv.weight))
    x = torch.randn((batch, cin, h, w) if batch else (cin, h, w))
    with torch.no_grad():
        ref, out = conv(x), sparse(x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max())))


@pytest.mark.slow
@needs_kernels
def test_runtime_runs_a_pruned_resnet_with_sparse_convolutions_and_equal_outputs():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10).eval()
    pk.prune(model, 0.9, include="layer*")
    x = torch.randn(1, 3, 96, 96)
    fast, fast_report = to_sparse_runtime(model, x, threads=2, repeats=3)
    rows = {r["name"]: r for r in fast_report.rows}
    assert rows["conv1"]["reason"].startswith("below min_sparsity")  # the stem was not pruned
    convs = [r for n, r in rows.items() if n.startswith("layer") and r["sparsity"] >= 0.5]
    assert len(convs) >= 16 and all(r["sparse_us"] > 0 and r["tokens"] > 0 for r in convs)
    for r in convs:
        assert (type(fast.get_submodule(r["name"])) is SparseConv2d) == (r["choice"] == "sparse")
    assert any(r["choice"] == "sparse" for r in convs)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    kept = sum(int(m.nnz) for m in fast.modules() if isinstance(m, SparseConv2d))  # zeros stay zero
    pruned = pk.finalize(model)
    assert kept == sum(int(torch.count_nonzero(pruned.get_submodule(r["name"]).weight)) for r in convs
                       if r["choice"] == "sparse")


def test_grouped_convolutions_stay_dense_with_the_reason():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 1))
    pk.prune(model, 0.9, scope="layer")
    fast, fast_report = to_sparse_runtime(model, torch.randn(1, 8, 10, 10), repeats=2)
    rows = fast_report.rows
    assert type(fast[0]) is nn.Conv2d and "groups=8" in rows[0]["reason"]


@needs_kernels
def test_runtime_models_deepcopy_and_keep_their_outputs_and_nonzeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Flatten(), nn.Linear(16 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 4))
    pk.prune(model, 0.8, scope="layer")
    x = torch.randn(2, 3, 8, 8)
    fast, _ = to_sparse_runtime(model, x, repeats=1, int8=True)
    layers = [m for m in fast.modules() if hasattr(m, "_k")]
    copied = copy.deepcopy(fast)
    with torch.no_grad():
        assert torch.equal(copied(x), fast(x))
    copied_layers = [m for m in copied.modules() if hasattr(m, "_k")]
    assert [type(m) for m in copied_layers] == [type(m) for m in layers] and layers
    for a, b in zip(layers, copied_layers):
        assert b._k is a._k  # the same compiled extension, found again by its build name
        assert all(torch.equal(p, q) for p, q in zip(a.buffers(), b.buffers()))  # nonzeros kept exactly


@needs_kernels
def test_a_copied_sparse_layer_still_runs_and_a_bad_build_name_is_refused():
    lin = _sparse_linear(16, 16, 0.5)
    sparse = copy.deepcopy(SparseLinear(lin, kernels))
    with torch.no_grad():
        assert torch.allclose(sparse(torch.ones(3, 16)), lin(torch.ones(3, 16)), atol=1e-5)
    with pytest.raises(ValueError, match="isa='sse'"):
        load("sse")


@pytest.mark.parametrize("kwargs, match", [({"repeats": 0}, "repeats=0 must be >= 1"), ({"threads": 0}, "threads=0"),
                                           ({"min_sparsity": 1.5}, "min_sparsity=1.5")])
def test_bad_runtime_arguments_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        to_sparse_runtime(_sparse_linear(8, 8, 0.9), torch.randn(2, 8), **kwargs)


@needs_kernels
def test_a_failing_layer_puts_the_swapped_layers_back(monkeypatch):
    import prunekit.deploy.runtime as runtime

    model = nn.Sequential(_sparse_linear(32, 32, 0.9), nn.ReLU(), _sparse_linear(32, 32, 0.9, seed=1))
    calls = []

    class Flaky(SparseLinear):
        def __init__(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("no memory for the second layer")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(runtime, "SparseLinear", Flaky)
    x = torch.randn(4, 32)
    ref = model(x)
    with pytest.raises(RuntimeError, match="second layer"), pytest.deprecated_call():
        sparse_runtime(model, x, inplace=True)  # the deprecated in-place form: all-or-nothing too
    assert all(type(m) is nn.Linear for m in (model[0], model[2])) and torch.equal(model(x), ref)


def test_example_inputs_that_do_not_run_the_model_are_named():
    with pytest.raises(ValueError, match="does not run on example_inputs"):
        to_sparse_runtime(_sparse_linear(8, 8, 0.9), torch.randn(2, 7))


@needs_kernels
def test_a_runtime_model_saves_as_the_dense_layers_it_computes(tmp_path):
    """pk.save of a to_sparse_runtime model wrote a file that no model could load."""
    model = nn.Sequential(_sparse_linear(64, 32, 0.9), nn.ReLU(), _sparse_linear(8, 64, 0.9, seed=1)).eval()
    fast, _ = to_sparse_runtime(model)  # unmeasured: every candidate runs sparse
    assert isinstance(fast[0], SparseLinear)
    pk.save(fast, tmp_path / "fast.pk")
    fresh = pk.load(tmp_path / "fast.pk", nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)))
    x = torch.randn(5, 32)
    torch.testing.assert_close(fresh(x), model(x))
    assert pk.sparsity_report(fresh).nonzeros == pk.sparsity_report(model).nonzeros
