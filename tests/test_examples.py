"""The headline example runs end to end in its reduced form and reports what it measured."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def minilm_example():
    spec = importlib.util.spec_from_file_location("minilm_sparse", ROOT / "examples" / "minilm_sparse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.usefixtures("sparse_kernels")
def test_minilm_sparse_quick(minilm_example, tmp_path):
    out = tmp_path / "minilm"
    result = minilm_example.main(["--quick", "--variants", "90%", "--out", str(out)])
    row = result["rows"][0]
    assert abs(row["sparsity"] - 0.9) < 1e-3  # exact count over the encoder's Linear weights
    assert row["file_vs_dense"] < 0.7  # embeddings stay dense; the encoder file shrinks
    assert -1 <= row["cos_p5"] <= row["cos_mean"] <= 1
    assert result["runtime_rel_err"]["90%"] < 1e-4  # the sparse runtime computes the same function
    assert result["fraction_sparse"]["90%"] > 0
    names = [v["name"] for v in result["batch1"]["variants"]]
    assert names[:2] == ["dense PyTorch fp32", "dense ONNX Runtime fp32"] and "90%, prunekit runtime" in names
    text = (tmp_path / "minilm.md").read_text()
    assert "| 90% | 90.0% |" in text


def test_recovery_keeps_zeros(minilm_example):
    import torch
    from transformers import BertConfig, BertModel

    import prunekit as pk

    torch.manual_seed(0)
    teacher = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64)).eval()
    student = BertModel(teacher.config)
    student.load_state_dict(teacher.state_dict())

    class Tok:
        def __call__(self, texts, **kw):
            ids = torch.tensor([[1 + (hash(w) % 48) for w in t.split()][:8] + [0] * (8 - min(8, len(t.split())))
                                for t in texts])
            return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    texts = [f"sentence number {i} says something else" for i in range(40)]
    minilm_example.recover(student, teacher, Tok(), texts, "unstructured", 0.8, steps=10, batch_size=4, lr=1e-3,
                           max_length=8, log_every=5)
    zeros_before = pk.sparsity_report(student).nonzeros
    assert abs(minilm_example.encoder_sparsity(student) - 0.8) < 1e-3
    pk.finalize(student)
    assert pk.sparsity_report(student).nonzeros == zeros_before
