"""What :func:`prunekit.recipes.recover` keeps on disk and how it walks its data: the checkpoint
(written atomically, read with ``torch.load(weights_only=True)``), the CSV/TensorBoard log, and the
batches in a fixed order so that a resumed run sees what the uninterrupted one would have."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any, Iterable

import torch

from prunekit._io import write_text, written_by

__all__ = ["Batches", "save_checkpoint", "load_checkpoint", "RecoveryLog"]

END = object()


class Batches:
    """The batches of ``data`` in order, round and round; ``index`` counts batches handed out."""

    def __init__(self, data: Iterable, start: int):
        self.data, self.index = data, 0
        self.seq = isinstance(data, Sequence)
        self.it = None
        for _ in range(start if not self.seq else 0):
            self.next()
        self.index = start

    def next(self) -> tuple[int | None, Any]:
        if self.seq:
            i = self.index % len(self.data)
            self.index += 1
            return i, self.data[i]
        if self.it is not None:
            batch = next(self.it, END)
            if batch is not END:
                self.index += 1
                return None, batch
        self.it = iter(self.data)
        batch = next(self.it, END)
        if batch is END:
            raise ValueError("data yields no batch: pass an iterable of inputs (a list of tensors or dicts, a DataLoader)")
        self.index += 1
        return None, batch


END = object()


def save_checkpoint(path, student, opt, sched, pruner, step, history, steps) -> None:
    state = {"step": step, "steps": steps, "student": student.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "pruner": pruner.state_dict() if pruner is not None else None,
             "rng": torch.get_rng_state(), "history": history}
    buf = io.BytesIO()
    torch.save(state, buf)
    written_by(lambda tmp: open(tmp, "wb").write(buf.getvalue()), path, "checkpoint")


def load_checkpoint(path, student, opt, sched, pruner, steps):
    state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or "student" not in state or state.get("steps") != steps:
        raise ValueError(f"checkpoint={path!r} is not a recovery checkpoint of a run of steps={steps} "
                         f"(it has steps={state.get('steps') if isinstance(state, dict) else None})")
    if (state["pruner"] is None) != (pruner is None):
        raise ValueError(f"checkpoint={path!r} was written {'with' if state['pruner'] else 'without'} a sparsity "
                         "ramp; resume with the same sparsity= as the run that wrote it")
    if pruner is not None:
        pruner.load_state_dict(state["pruner"])
    student.load_state_dict(state["student"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["step"]), list(state["history"]), state["rng"]


class RecoveryLog:
    """``recovery.csv`` in ``log_dir`` (rewritten whole, atomically, at each row) and TensorBoard
    scalars where tensorboard is installed; nothing without ``log_dir``."""

    KEYS = ["step", "loss", "output_loss", "hidden_loss", "sparsity", "lr", "seconds", "metric"]

    def __init__(self, log_dir):
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.writer = None
        if self.log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self.writer = SummaryWriter(self.log_dir)

    def write(self, history: list[dict]) -> None:
        if self.log_dir is None:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        text = io.StringIO()
        w = csv.DictWriter(text, self.KEYS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
        write_text(os.path.join(self.log_dir, "recovery.csv"), text.getvalue(), "log_dir")
        if self.writer is not None:
            row = history[-1]
            for k in self.KEYS[1:]:
                if k in row and k != "seconds":
                    self.writer.add_scalar(f"recovery/{k}", row[k], row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
