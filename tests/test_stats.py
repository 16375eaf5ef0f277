"""Input statistics (Wanda norms, SparseGPT Hessians), shared between layers that read one tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit._stats import InputStats, gather


class Attention(nn.Module):
    """q/k/v read one tensor; o reads another of the same shape; the last layer reads a tensor changed in place."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o, self.after = (nn.Linear(8, 8) for _ in range(5))

    def forward(self, x):
        h = self.q(x) + self.k(x) + self.v(x)
        y = self.o(h)
        h.mul_(2.0)  # same tensor object, new version: its statistic must be recomputed
        return self.after(h) + y


@pytest.mark.parametrize("full", [True, False])
def test_shared_statistics_equal_separate_ones(full):
    torch.manual_seed(0)
    model = Attention()
    layers = [model.q, model.k, model.v, model.o, model.after]
    inputs = [torch.randn(4, 5, 8) for _ in range(3)]
    results = []
    for make in (lambda: gather(layers, full), lambda: [InputStats(m, full) for m in layers]):
        stats = make()
        with torch.no_grad():
            for x in inputs:
                model(x)
        for st in stats:
            st.remove()
        results.append(stats)
    shared, separate = results
    for a, b in zip(shared, separate):
        assert a.n == b.n == 60
        torch.testing.assert_close(a.acc, b.acc)
    torch.testing.assert_close(shared[0].acc, shared[2].acc)  # q and v read the same tensor
    assert not torch.allclose(shared[3].acc, shared[4].acc)  # the in-place change was seen


def test_inference_mode_inputs_are_counted_without_sharing():
    model = Attention()
    stats = gather([model.q, model.k], full=True)
    with torch.inference_mode():
        model(torch.randn(2, 8))
    assert stats[0].n == stats[1].n == 2
    torch.testing.assert_close(stats[0].acc, stats[1].acc)
