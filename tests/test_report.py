"""SparsityReport: counts, table, dict."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit as pk
from tests.helpers import Net


def test_counts_match_a_manual_count():
    torch.manual_seed(0)
    model = Net()
    pk.prune(model, 0.7, include="fc*", scope="layer")
    report = pk.sparsity_report(model)
    assert [r.name for r in report.rows] == ["conv.weight", "fc1.weight", "fc2.weight"]
    assert report["fc1.weight"].nonzeros == int((model.fc1.weight != 0).sum()) == 4096 - round(0.7 * 4096)
    assert report["conv.weight"].pattern == "-" and report["fc2.weight"].pattern == "unstructured"
    total = sum(p.numel() for p in Net().parameters())
    assert report.model_params == total
    assert report.model_nonzeros == sum(int((v != 0).sum()) for v in [model.conv.weight, model.conv.bias,
        model.bn.weight, model.bn.bias, model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias])
    with pytest.raises(KeyError, match="no row"):
        report["nope"]


def test_table_is_aligned_and_dict_is_json():
    model = Net()
    pk.prune(model, 0.5)
    report = pk.sparsity_report(model)
    lines = str(report).splitlines()
    assert lines[0].startswith("parameter") and "sparsity" in lines[0]
    ends = {len(line.split("%")[0]) for line in lines[2:] if "%" in line and not line.startswith("-")}
    assert len(ends) == 1, "the sparsity column is right-aligned"
    data = json.loads(json.dumps(report.to_dict()))
    assert data["nonzeros"] == report.nonzeros and len(data["rows"]) == 3
    assert data["sparsity"] == pytest.approx(0.5, abs=1e-3)
