"""ONNX export: zeros counted in the file, int8 variants, live masks exported as a finalized copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.deploy.onnx import export_onnx

pytest.importorskip("onnxruntime")


def _lenet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)).eval()


@pytest.mark.parametrize("quantize", [None, "int8", "int8-static"])
def test_export_keeps_zeros_and_outputs(tmp_path, quantize):
    model = _lenet()
    pk.prune(model, 0.92)
    nz = pk.sparsity_report(model).nonzeros
    x = torch.randn(8, 784)
    calibration = [torch.randn(4, 784) for _ in range(4)]
    with pytest.warns(UserWarning, match="live masks"):
        info = export_onnx(model, x[:1], tmp_path / "m.onnx", quantize=quantize, data=calibration)
    assert pk.masks(model)  # the model itself keeps its masks
    assert info.nonzeros == nz and info.weights == 784 * 300 + 300 * 100 + 100 * 10
    result = pk.compare({"torch": model, "onnx": info.path}, x, repeats=2)
    assert result["onnx"].rel_err < (1e-5 if quantize is None else 0.05)
    if quantize:
        assert info.file_bytes < 0.3 * (4 * info.weights)


def test_static_int8_quantizes_the_weight_layers_and_leaves_embeddings_float(tmp_path):
    import onnx

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(50, 16), nn.Linear(16, 4)

        def forward(self, ids):
            return self.fc(self.emb(ids))

    torch.manual_seed(0)
    model = Tagger().eval()
    ids = torch.randint(0, 50, (1, 6))
    info = export_onnx(model, ids, tmp_path / "t.onnx", quantize="int8-static", data=[ids])
    graph = onnx.load(info.path).graph
    made_by = {out: n.op_type for n in graph.node for out in n.output}
    gathers = [n for n in graph.node if n.op_type == "Gather"]
    weight_ops = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert gathers and weight_ops
    assert all(made_by.get(n.input[0]) != "DequantizeLinear" for n in gathers)  # the table stays float
    assert all(made_by.get(i) == "DequantizeLinear" for n in weight_ops for i in n.input[:2])
    assert pk.compare({"torch": model, "onnx": info.path}, ids, repeats=2)["onnx"].rel_err < 0.05


def test_export_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="quantize='int4'"):
        export_onnx(_lenet(), torch.randn(1, 784), tmp_path / "m.onnx", quantize="int4")
    with pytest.raises(ValueError, match="needs data="):
        export_onnx(_lenet(), torch.randn(1, 784), tmp_path / "m.onnx", quantize="int8-static")


def test_exports_multihead_attention_in_eval_mode(tmp_path):
    """nn.MultiheadAttention's fused eval fast path has no ONNX form; export must not take it."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort
    from torchvision.models.vision_transformer import EncoderBlock

    from prunekit.deploy import export_onnx

    torch.manual_seed(0)
    block = EncoderBlock(4, 32, 64, 0.0, 0.0).eval()
    x = torch.randn(1, 5, 32)
    info = export_onnx(block, x, tmp_path / "block.onnx")
    session = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, block(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("sparse_kernels")
def test_runtime_model_exports_what_its_float_kernels_compute(tmp_path):
    """export_onnx of a to_sparse_runtime model used to write one constant for every input."""
    from prunekit.deploy import to_sparse_runtime
    from prunekit.deploy.kernels import load

    if load() is None:
        pytest.skip("C++ kernels could not be built here")
    model = _lenet()
    pk.prune(model, 0.9, scope="layer")
    fast, _ = to_sparse_runtime(model)  # unmeasured: every candidate runs sparse, whatever the machine load
    assert any(type(m).__name__ == "SparseLinear" for m in fast.modules())
    info = export_onnx(fast, torch.randn(1, 784), tmp_path / "runtime.onnx")
    other = torch.randn(5, 784)  # not the tracing input: a constant graph would fail here
    result = pk.compare({"runtime": fast, "onnx": info.path}, other, repeats=1)
    assert result["onnx"].rel_err < 1e-5
    assert info.nonzeros == pk.sparsity_report(model).nonzeros
    with pytest.raises(RuntimeError, match="torch.jit.trace cannot record"):
        torch.jit.trace(fast, torch.randn(1, 784))
    int8, int8_report = to_sparse_runtime(model, torch.randn(1, 784), int8=True)
    if any("int8" in r["choice"] for r in int8_report.rows):
        with pytest.raises(ValueError, match="int8 kernels"):
            export_onnx(int8, torch.randn(1, 784), tmp_path / "int8.onnx")
        assert not (tmp_path / "int8.onnx").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_int8_export_of_other_float_dtypes_really_quantizes(tmp_path, dtype):
    from prunekit.deploy.onnx import count_int8_weights

    model = _lenet().to(dtype)
    pk.prune(model, 0.9)
    pk.finalize(model)
    with pytest.warns(UserWarning, match="float32 copy"):
        info = export_onnx(model, torch.randn(1, 784, dtype=dtype), tmp_path / "q.onnx", quantize="int8")
    assert count_int8_weights(info.path) == info.weights  # every weight matrix is int8 in the file
    assert info.nonzeros == pk.sparsity_report(model).nonzeros
    assert next(model.parameters()).dtype == dtype  # the model itself is left as it was


def test_int8_export_that_quantizes_nothing_is_refused_and_writes_nothing(tmp_path):
    class NoWeights(nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2

    with pytest.raises(ValueError, match="quantized no weight"):
        export_onnx(NoWeights(), torch.randn(1, 8), tmp_path / "q.onnx", quantize="int8")
    assert list(tmp_path.iterdir()) == []


def test_export_takes_keyword_inputs_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    """A Hugging Face model given a dict (input_ids, attention_mask) exported with the right inputs."""
    import tempfile

    transformers = pytest.importorskip("transformers")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64)).eval()
    ids = torch.randint(0, 50, (1, 12))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    info = export_onnx(bert, example, tmp_path / "bert.onnx", quantize="int8")
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(info.path).get_inputs()]
    assert names == ["input_ids", "attention_mask"]
    other = {"input_ids": torch.randint(0, 50, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    assert pk.compare({"torch": bert, "onnx": info.path}, other, repeats=1)["onnx"].rel_err < 0.1
    assert list(scratch.iterdir()) == []  # the fp32 intermediate is gone


def test_export_restores_every_module_training_flag(tmp_path):
    model = _lenet().train()
    model[2].eval()  # a mixed state must come back exactly
    export_onnx(model, torch.randn(1, 784), tmp_path / "m.onnx")
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]


def test_token_inputs_get_a_dynamic_sequence_and_outputs_their_names(tmp_path):
    """A 12-token example fixed the sequence at 12 (20 tokens failed in ONNX Runtime); outputs were '883'."""
    transformers = pytest.importorskip("transformers")
    import onnxruntime as ort

    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64)).eval()
    ids = torch.randint(0, 50, (1, 12))
    info = export_onnx(bert, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tmp_path / "b.onnx")
    session = ort.InferenceSession(info.path)
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "pooler_output"]
    longer = {"input_ids": torch.randint(0, 50, (3, 20)), "attention_mask": torch.ones(3, 20, dtype=torch.long)}
    got = session.run(None, {k: v.numpy() for k, v in longer.items()})[0]
    torch.testing.assert_close(torch.from_numpy(got), bert(**longer).last_hidden_state, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="does not run on example_inputs"):
        export_onnx(_lenet(), torch.randn(1, 783), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
