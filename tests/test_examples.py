"""The headline example runs end to end in its reduced form and reports what it measured."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

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
    result = minilm_example.main(["--quick", "--variants", "90%", "2:4 + int8", "--out", str(out)])
    rows = {r["variant"]: r for r in result["rows"]}
    assert abs(rows["90%"]["sparsity"] - 0.9) < 1e-3  # exact count over the encoder's Linear weights
    assert abs(rows["2:4 + int8"]["sparsity"] - 0.5) < 1e-3
    assert rows["90%"]["file_vs_dense"] < 0.7  # embeddings stay dense; the encoder file shrinks
    for r in rows.values():
        assert -1 <= r["cos_p5"] <= r["cos_mean"] <= 1 and r["steps"] == 12 and r["curve"]
    q = result["quality"]
    assert q["dense PyTorch fp32"]["cos_mean"] > 0.9999  # scored as timed: the baseline is itself
    assert q["dense ONNX Runtime fp32"]["cos_mean"] > 0.999  # the same function in another engine
    assert q["dense ONNX Runtime int8"]["cos_mean"] < q["dense ONNX Runtime fp32"]["cos_mean"]  # int8 is lossy
    assert result["fraction_sparse"]["90%"] > 0
    names = [v["name"] for v in result["batch1"]["variants"]]
    assert names == minilm_example.DENSE + ["90%", "2:4 + int8"]
    text = (tmp_path / "minilm.md").read_text()
    assert "| 90% | 90.0% |" in text and "| dense ONNX Runtime int8 | - |" in text


def test_recovery_keeps_zeros(minilm_example):
    """The example's recipe on a tiny BERT: the sparsity asked for, exactly, and finalize keeps every zero."""
    import argparse

    from transformers import BertConfig, BertModel

    import prunekit as pk

    torch.manual_seed(0)
    teacher = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64)).eval()
    data = [{"input_ids": torch.randint(1, 50, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}
            for _ in range(6)]
    args = argparse.Namespace(ramp="sparsegpt", start=0.5, steps=10, minutes=5.0, lr=1e-3, eval_every=5, updates=3)
    scores = []
    student, result = minilm_example.recover_variant(teacher, data, data[:2], "unstructured", 0.8, False, args,
                                                     lambda m: scores.append(1.0) or 1.0)
    assert result.steps == 10 and scores
    assert abs(minilm_example.encoder_sparsity(student) - 0.8) < 1e-3
    assert not pk.masks(student)  # finalized: the zeros are in the weights
    # 2:4 keeps its one-shot mask through training with int8 fake quantization: every group of 4 has 2 zeros
    student, result = minilm_example.recover_variant(teacher, data, data[:2], "2:4", None, True, args, lambda m: 1.0)
    weights = [m.weight for n, m in student.named_modules() if n.startswith("encoder.") and isinstance(m, torch.nn.Linear)]
    assert weights and all(int((w.reshape(-1, 4) == 0).sum(1).min()) >= 2 for w in weights)
    assert not torch.equal(weights[0], teacher.encoder.layer[0].attention.self.query.weight)  # it did train
