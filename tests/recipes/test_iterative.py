"""iterative_pruning and sgd_cosine on real digits (scikit-learn's 8x8 set, small and fast)."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import prunekit as pk
from prunekit.recipes import iterative_pruning, sgd_cosine


def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    train = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 1400, 64)]
    return train, (x[1400:], y[1400:])


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def accuracy(model, test):
    with torch.no_grad():
        return (model.eval()(test[0]).argmax(1) == test[1]).float().mean().item()


@pytest.mark.slow
def test_iterative_pruning_reaches_the_target_and_keeps_accuracy():
    train, test = digits()
    model = mlp()
    sgd_cosine(train, epochs=8, lr=0.1)(model)
    dense = accuracy(model, test)
    history = iterative_pruning(model, sgd_cosine(train, epochs=2, lr=0.05), lambda m: accuracy(m, test),
                                sparsity=0.9, rounds=4, progress=False)
    assert len(history) == 5 and history.rows[0]["metric"] == pytest.approx(dense)
    sparsities = [r["sparsity"] for r in history.rows]
    assert sparsities == sorted(sparsities)
    for k in range(1, 5):
        assert history.rows[k]["sparsity"] == pytest.approx(1 - 0.1 ** (k / 4), abs=1e-3)
    assert history.final["metric"] > dense - 0.05
    nz = pk.sparsity_report(model).nonzeros
    pk.finalize(model)
    assert pk.sparsity_report(model).nonzeros == nz
    assert "sparsity" in str(history)


def test_sgd_cosine_max_steps_and_bad_args():
    train, _ = digits()
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    sgd_cosine(train, epochs=1, on_step=seen.append)(model, max_steps=3)
    assert seen == [0, 1, 2]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="epochs=0"):
        sgd_cosine(train, epochs=0)
    with pytest.raises(ValueError, match="target=1.0|final_sparsity=1.0"):
        iterative_pruning(mlp(), lambda m: None, lambda m: 0.0, target=1.0)
