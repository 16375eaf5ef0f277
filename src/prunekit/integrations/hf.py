"""Hugging Face ``Trainer`` integration: drive a :class:`prunekit.Pruner` from ``Trainer.train()``.

Example:
    >>> pruner = prunekit.Pruner(model, prunekit.schedules.PolynomialDecay(0.0, 0.8, 0, 500, frequency=50))
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[PruningCallback(pruner)])
    >>> trainer.train(); prunekit.finalize(model)
"""

from __future__ import annotations

from transformers import TrainerCallback

from prunekit.masks import finalize
from prunekit.pruner import Pruner

__all__ = ["PruningCallback"]


class PruningCallback(TrainerCallback):
    """Calls ``pruner.step()`` after every optimizer step of the ``Trainer``.

    The Trainer builds its optimizer inside ``train()``; the callback hands it to the pruner on the
    first step so that optimizer state at pruned entries is cleared after each mask update.

    Args:
        pruner: the :class:`prunekit.Pruner` over the model the Trainer trains.
        finalize_at_end: bake the masks in when training ends (``prunekit.finalize``).
    """

    def __init__(self, pruner: Pruner, finalize_at_end: bool = False):
        if not isinstance(pruner, Pruner):
            raise TypeError(f"pruner must be a prunekit.Pruner, got {type(pruner).__name__}")
        self.pruner = pruner
        self.finalize_at_end = finalize_at_end

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.pruner.optimizer is None and optimizer is not None:
            self.pruner.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        self.pruner.step()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.finalize_at_end:
            finalize(self.pruner.model)
        return control
