"""Input statistics of Linear layers, gathered by forward hooks (Wanda's norms, SparseGPT's Hessian)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InputStats"]


class InputStats:
    """A forward hook on one Linear that accumulates its inputs' statistics: the sum of squares per
    input feature (Wanda), or ``X^T X`` with ``full=True`` (SparseGPT's Hessian). Call ``remove()``."""

    def __init__(self, module: nn.Linear, full: bool = False):
        self.n = 0
        self.full = full
        cols = module.in_features
        self.acc = torch.zeros(cols, cols) if full else torch.zeros(cols)
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()
        self.n += x.shape[0]
        if self.full:
            self.acc += x.T @ x
        else:
            self.acc += x.square().sum(0)

    def remove(self) -> None:
        self.handle.remove()

    def hessian(self) -> torch.Tensor:
        """``2 X^T X / n`` (needs ``full=True``)."""
        return 2.0 * self.acc / max(self.n, 1)

    def norms(self) -> torch.Tensor:
        """L2 norm of each input feature over everything seen (needs ``full=False``)."""
        return self.acc.sqrt()
