"""How calibration batches are fed to a model (shared by data-aware criteria and recipes).

A batch is one of:

* a Tensor ``x``: ``out = model(x)``, ``loss = loss_fn(out)``;
* a pair ``(inputs, target)``: ``out = model(inputs)`` (``model(*inputs)`` when ``inputs`` is a
  tuple), ``loss = loss_fn(out, target)``;
* a dict of keyword arguments: ``out = model(**batch)``, ``loss = loss_fn(out, batch)``, or
  ``out.loss`` when ``loss_fn`` is None (Hugging Face models given ``labels``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["forward_batch", "run_loss", "eval_mode", "InputStats"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run calibration in eval mode (no dropout, BatchNorm statistics untouched), then restore every
    module's own ``training`` flag."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def forward_batch(model: nn.Module, batch: Any) -> tuple[Any, Any]:
    """Run the model on one batch; returns ``(output, target_or_None)``."""
    if isinstance(batch, torch.Tensor):
        return model(batch), None
    if isinstance(batch, dict):
        return model(**batch), batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, target = batch
        out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
        return out, target
    raise TypeError(
        f"a calibration batch must be a Tensor, an (inputs, target) pair or a dict of model keyword "
        f"arguments, got {type(batch).__name__}"
    )


def run_loss(model: nn.Module, batch: Any, loss_fn: Callable | None) -> torch.Tensor:
    """Forward one batch and return a scalar loss (see the module docstring for the forms)."""
    out, target = forward_batch(model, batch)
    if loss_fn is None:
        loss = getattr(out, "loss", None)
        if loss is None:
            raise ValueError(
                "loss_fn is required: the model output has no .loss; pass loss_fn=nn.CrossEntropyLoss() "
                "with (inputs, target) batches, or loss_fn=lambda out: ... with tensor batches"
            )
    elif target is None:
        loss = loss_fn(out)
    else:
        loss = loss_fn(out, target)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    return loss.reshape(())


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
