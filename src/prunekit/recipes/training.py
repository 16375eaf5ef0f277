"""The default fine-tuning loop: SGD with momentum and a cosine learning rate."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from prunekit.inputs import Labeled
from prunekit.inputs import loss as batch_loss

__all__ = ["sgd_cosine"]


def sgd_cosine(
    loader: Iterable,
    loss_fn: Callable | None = None,
    epochs: int = 1,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    on_step: Callable[[int], None] | None = None,
) -> Callable[..., None]:
    """Make a ``train_fn(model, max_steps=None)`` for the recipes.

    Each call builds a fresh SGD optimizer and cosine schedule over ``epochs`` passes of ``loader``
    and trains the model in place; masks hold. ``loader`` yields ``(inputs, target)`` pairs, as a
    ``DataLoader`` does (a supervised loop: a pair is always inputs and target here), or any batch of
    :mod:`prunekit.inputs` (:class:`~prunekit.inputs.Labeled`, dicts with Hugging Face ``labels``).
    ``max_steps`` stops early (used by late rewinding); ``on_step(step)`` runs after each step.

    Example:
        >>> train_fn = prunekit.recipes.sgd_cosine(train_loader, nn.CrossEntropyLoss(), epochs=2)
    """
    if epochs < 1 or lr <= 0:
        raise ValueError(f"epochs={epochs} must be >= 1 and lr={lr} > 0")
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()

    def train_fn(model: nn.Module, max_steps: int | None = None) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        total = epochs * len(loader) if hasattr(loader, "__len__") else None
        sched = None
        if total:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        model.train()
        step = 0
        for _ in range(epochs):
            for batch in loader:
                if max_steps is not None and step >= max_steps:
                    model.eval()
                    return
                if isinstance(batch, (tuple, list)) and not isinstance(batch, Labeled) and len(batch) == 2:
                    batch = Labeled(*batch)
                loss = batch_loss(model, batch, loss_fn)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if on_step is not None:
                    on_step(step)
                step += 1
        model.eval()

    return train_fn
