"""lottery_ticket: rounds, rewinding (to init and late), output-layer rate, the control."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.recipes import lottery_ticket, sgd_cosine
from tests.recipes.test_iterative import accuracy, digits, mlp


@pytest.mark.slow
def test_ticket_rewinds_survivors_to_init_and_prunes_geometrically():
    train, test = digits()
    model = mlp()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    rewound = {}

    def train_fn(m, max_steps=None):
        if not rewound and pk.masks(m):  # first call after a prune: weights must be the init values
            rewound.update({"0.weight": m[0].parametrizations.weight.original.detach().clone()})
        sgd_cosine(train, epochs=3, lr=0.1)(m, max_steps=max_steps)

    res = lottery_ticket(model, train_fn, lambda m: accuracy(m, test), sparsity=1 - 0.5**3, rounds=3, output_sparsity=1 - 0.75**3,
                         control=True, progress=False)
    assert torch.equal(rewound["0.weight"], init["0.weight"])
    rows = res.history.rows
    assert [r["round"] for r in rows] == [0, 1, 2, 3] and rows[0]["remaining"] == 1.0
    out = [m["4.weight"] for m in res.masks]
    hidden = [m["0.weight"] for m in res.masks]
    for r in (1, 2, 3):
        assert 1 - hidden[r - 1].float().mean().item() > 1 - out[r - 1].float().mean().item()
        assert 1 - out[r - 1].float().mean().item() == pytest.approx(1 - 0.75**r, abs=0.01)
    for a, b in zip(res.masks, res.masks[1:]):
        for k in a:
            assert not bool((b[k] & ~a[k]).any())  # masks only shrink
    assert all(r["control_metric"] is not None for r in rows[1:])
    assert all(r["control_metric"] != r["metric"] for r in rows[1:])  # a different initialization
    assert rows[-1]["metric"] > 0.8


def test_late_rewinding_uses_the_weights_after_k_steps():
    train, test = digits()
    model = mlp()
    res = lottery_ticket(model, sgd_cosine(train, epochs=1, lr=0.1), lambda m: accuracy(m, test), sparsity=0.3,
                         rounds=1, rewind_step=5, progress=False)
    reference = mlp()
    sgd_cosine(train, epochs=1, lr=0.1)(reference, max_steps=5)
    assert torch.equal(res.rewind_state["0.weight"], reference[0].weight.detach())


def test_bad_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="sparsity=1.5"):
        lottery_ticket(model, lambda m: None, lambda m: 0.0, sparsity=1.5)
    with pytest.raises(TypeError, match="max_steps"):
        lottery_ticket(model, lambda m: None, lambda m: 0.0, rewind_step=3)
    with pytest.raises(ValueError, match="output_layer='fc'"):
        lottery_ticket(model, lambda m: None, lambda m: 0.0, output_layer="fc")
    pk.prune(model, 0.5)
    with pytest.raises(ValueError, match="unpruned"):
        lottery_ticket(model, lambda m: None, lambda m: 0.0)
