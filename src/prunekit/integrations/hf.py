"""Hugging Face ``Trainer`` integration: drive a :class:`prunekit.Pruner` from ``Trainer.train()``.

Checkpoints work with the ordinary Hugging Face calls. A masked model's state dict holds its
weights under their plain names (zeros included) plus a ``<name>_mask`` entry per mask (see
:mod:`prunekit.masks`), so ``from_pretrained(checkpoint)`` gives a plain model with the zeros, and
``trainer.train(resume_from_checkpoint=...)`` into a model with a Pruner (and this callback) gets
its masks back. The callback also writes the Pruner's step counter and log beside each checkpoint
(``prunekit_pruner.json``) and restores them when training resumes, so the schedule continues
where it stopped.

Example:
    >>> pruner = prunekit.Pruner(model, prunekit.schedules.PolynomialDecay(0.0, 0.8, 0, 500, frequency=50))
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[PruningCallback(pruner)])
    >>> trainer.train(); prunekit.finalize(model)
"""

from __future__ import annotations

import json
import os

from transformers import TrainerCallback

from prunekit._io import write_text
from prunekit.masks import finalize
from prunekit.pruner import Pruner

__all__ = ["PruningCallback", "STATE_FILE"]

STATE_FILE = "prunekit_pruner.json"


class PruningCallback(TrainerCallback):
    """Calls ``pruner.step()`` after every optimizer step of the ``Trainer``.

    The Trainer builds its optimizer inside ``train()``; the callback hands it to the pruner on the
    first step so that optimizer state at pruned entries is cleared after each mask update. Each
    checkpoint gets the Pruner's state (``prunekit_pruner.json``); a resumed run reads it back.

    Args:
        pruner: the :class:`prunekit.Pruner` over the model the Trainer trains.
        finalize_at_end: bake the masks in when training ends (``prunekit.finalize``).
    """

    def __init__(self, pruner: Pruner, finalize_at_end: bool = False):
        if not isinstance(pruner, Pruner):
            raise TypeError(f"pruner must be a prunekit.Pruner, got {type(pruner).__name__}")
        self.pruner = pruner
        self.finalize_at_end = finalize_at_end

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 and self.pruner.step_count == 0:  # resuming from a checkpoint
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
            saved = None
            if os.path.isfile(path):
                with open(path) as f:
                    saved = json.load(f)
            self.pruner.step_count = int(saved["step"]) if saved else int(state.global_step)
            self.pruner.updated = bool(saved["updated"]) if saved else True
            self.pruner.log = list(saved["log"]) if saved else []
        return control

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.pruner.optimizer is None and optimizer is not None:
            self.pruner.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        self.pruner.step()
        return control

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            sd = self.pruner.state_dict()
            record = {"step": sd["step"], "updated": sd["updated"], "schedule": sd["schedule"], "pattern": sd["pattern"],
                      "log": sd["log"]}
            write_text(os.path.join(folder, STATE_FILE), json.dumps(record))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.finalize_at_end:
            finalize(self.pruner.model)
        return control
