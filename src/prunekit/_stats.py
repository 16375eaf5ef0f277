"""Input statistics of Linear layers, gathered by forward hooks (Wanda's norms, SparseGPT's Hessian)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InputStats", "gather"]


class _Last:
    """The last input seen by a group of hooks and its statistic, so that layers reading the same tensor
    (q/k/v, gate/up) compute ``X^T X`` once."""

    def __init__(self):
        self.key = self.value = self.input = None


class InputStats:
    """A forward hook on one Linear that accumulates its inputs' statistics: the sum of squares per
    input feature (Wanda), or ``X^T X`` with ``full=True`` (SparseGPT's Hessian). Call ``remove()``.

    ``shared``: a holder common to several layers' hooks (see :func:`gather`); a layer whose input is
    the very tensor the previous hook saw reuses that hook's statistic instead of recomputing it.
    """

    def __init__(self, module: nn.Linear, full: bool = False, shared: _Last | None = None):
        self.n = 0
        self.full = full
        self.shared = shared
        cols = module.in_features
        self.acc = torch.zeros(cols, cols) if full else torch.zeros(cols)
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        raw = args[0]
        try:
            key = (id(raw), raw._version, raw.shape, self.full)
        except RuntimeError:  # an inference-mode tensor has no version counter: do not share
            key = None
        if key is not None and self.shared is not None and self.shared.key == key:
            rows, value = self.shared.value
        else:
            if self.shared is not None:  # drop the previous layer's statistic before computing this one
                self.shared.key = self.shared.value = self.shared.input = None
            x = raw.detach().reshape(-1, raw.shape[-1]).float().cpu()
            rows, value = x.shape[0], (x.T @ x if self.full else x.square().sum(0))
            if key is not None and self.shared is not None:
                self.shared.key, self.shared.value = key, (rows, value)
                self.shared.input = raw  # held so that its id cannot be reused while the key is alive
        self.n += rows
        self.acc += value

    def remove(self) -> None:
        self.handle.remove()
        if self.shared is not None:
            self.shared.key = self.shared.value = self.shared.input = None

    def hessian(self) -> torch.Tensor:
        """``2 X^T X / n`` (needs ``full=True``)."""
        return 2.0 * self.acc / max(self.n, 1)

    def norms(self) -> torch.Tensor:
        """L2 norm of each input feature over everything seen (needs ``full=False``)."""
        return self.acc.sqrt()


def gather(modules: list[nn.Linear], full: bool = False) -> list[InputStats]:
    """One :class:`InputStats` per module, sharing the work between modules that read the same input."""
    shared = _Last()
    return [InputStats(m, full, shared) for m in modules]
