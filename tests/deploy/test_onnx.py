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
        info = export_onnx(model, x[:1], tmp_path / "m.onnx", quantize=quantize, calibration=calibration)
    assert pk.masks(model)  # the model itself keeps its masks
    assert info.nonzeros == nz and info.weights == 784 * 300 + 300 * 100 + 100 * 10
    result = pk.compare({"torch": model, "onnx": info.path}, x, rounds=2)
    assert result["onnx"].rel_err < (1e-5 if quantize is None else 0.05)
    if quantize:
        assert info.file_bytes < 0.3 * (4 * info.weights)


def test_export_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="quantize='int4'"):
        export_onnx(_lenet(), torch.randn(1, 784), tmp_path / "m.onnx", quantize="int4")
    with pytest.raises(ValueError, match="needs calibration"):
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
