"""How prunekit calls a model on inputs: one rule for examples, calibration data and timing.

An **input** is what one call of the model takes:

* a Tensor ``x``: ``model(x)``;
* a tuple or list: positional inputs, ``model(*inputs)``;
* a dict: keyword inputs, ``model(**inputs)`` (Hugging Face ``input_ids=..., attention_mask=...``).

``example_inputs`` (tracing, counting MACs, timing, export) is one input. ``data`` (calibration for
data-aware criteria, one-shot pruning, static int8, training) is an iterable of inputs; a batch that
also carries a target for a loss says so explicitly with :class:`Labeled`, and
:func:`labeled` turns a ``DataLoader`` of ``(x, y)`` pairs into such batches::

    >>> pk.prune(model, 0.5, criterion="taylor", data=pk.inputs.labeled(loader), loss_fn=nn.CrossEntropyLoss())

Until prunekit 0.3 a plain 2-item tuple in ``data`` is still read as ``(inputs, target)`` (with a
``FutureWarning``); from 0.3 it is two positional inputs, as in ``example_inputs``.

Everything here leaves the model as it found it: :func:`modes` restores each module's train/eval flag,
:func:`threads` restores torch's thread count.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import torch
from torch import nn

__all__ = ["Labeled", "labeled", "split", "call", "first_tensor", "forward", "loss", "modes", "threads"]


class Labeled(NamedTuple):
    """One calibration batch with a target: ``model`` runs on ``inputs`` (any input form), and
    ``loss_fn(output, target)`` scores it. ``Labeled(inputs=(a, b), target=None)`` is a batch of two
    positional inputs without a target."""

    inputs: Any
    target: Any = None


def labeled(batches: Iterable[Any]) -> Iterable[Labeled]:
    """``(inputs, target)`` pairs (a ``DataLoader``'s batches) as :class:`Labeled` batches. Lazy, and
    iterable as often as ``batches`` is (a ``DataLoader`` can be passed over every epoch).

    Example:
        >>> report = pk.prune(model, 0.5, criterion="taylor", data=pk.inputs.labeled(loader),
        ...                   loss_fn=nn.CrossEntropyLoss())
    """
    return _Labeler(batches)


class _Labeler:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if isinstance(batch, Labeled):
                yield batch
            elif isinstance(batch, (tuple, list)) and len(batch) == 2:
                yield Labeled(batch[0], batch[1])
            else:
                raise ValueError(f"labeled(): batch {i} is a {type(batch).__name__}, not an (inputs, target) pair")


def split(inputs: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for one input (see the module docstring)."""
    if isinstance(inputs, Labeled):
        return split(inputs.inputs)
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def call(fn: Callable, inputs: Any) -> Any:
    """``fn`` called on one input: ``fn(x)``, ``fn(*inputs)`` or ``fn(**inputs)``."""
    args, kwargs = split(inputs)
    return fn(*args, **kwargs)


def first_tensor(out: Any) -> torch.Tensor | None:
    """The tensor a model output leads with: itself, the first of a tuple, the first value of a dict
    or ``ModelOutput``, else ``last_hidden_state``; None when there is none."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    if isinstance(out, Mapping) and out:
        return first_tensor(next(iter(out.values())))
    return getattr(out, "last_hidden_state", None)


def _unpack(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a calibration batch (a target only where the batch says it has one)."""
    if isinstance(batch, Labeled):
        return batch.inputs, batch.target
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and not isinstance(batch, torch.Size):
        warnings.warn(
            "a plain 2-item batch is read as (inputs, target) until prunekit 0.3; from then on a tuple is positional "
            "inputs, as in example_inputs. Say which you mean: data=prunekit.inputs.labeled(loader) for "
            "(inputs, target) pairs, or prunekit.inputs.Labeled(inputs=(a, b)) for two positional inputs",
            FutureWarning, stacklevel=4)
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        return batch, batch
    return batch, None


def forward(model: Callable, batch: Any) -> tuple[Any, Any]:
    """Run ``model`` on one calibration batch; returns ``(output, target)``. The target is the
    :class:`Labeled` target, the dict itself for keyword batches (Hugging Face ``labels``), else None."""
    if not isinstance(batch, (torch.Tensor, tuple, list, Mapping)):
        raise TypeError(
            f"a data batch must be a Tensor, a tuple of positional inputs, a dict of keyword inputs or "
            f"prunekit.inputs.Labeled(inputs, target), got {type(batch).__name__}")
    inputs, target = _unpack(batch)
    return call(model, inputs), target


def loss(model: Callable, batch: Any, loss_fn: Callable | None) -> torch.Tensor:
    """Forward one batch and return a scalar loss: ``loss_fn(out, target)`` with a target,
    ``loss_fn(out)`` without, ``out.loss`` when ``loss_fn`` is None (Hugging Face ``labels``)."""
    out, target = forward(model, batch)
    if loss_fn is None:
        value = getattr(out, "loss", None)
        if value is None:
            raise ValueError(
                "loss_fn is required: the model output has no .loss; pass loss_fn=nn.CrossEntropyLoss() with "
                "data=prunekit.inputs.labeled(loader), or loss_fn=lambda out: ... with batches without a target")
    elif target is None:
        value = loss_fn(out)
    else:
        value = loss_fn(out, target)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(value).__name__}")
    return value.reshape(())


@contextmanager
def modes(model: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """``model.train(train)`` inside (eval by default: no dropout, BatchNorm statistics untouched);
    afterwards every module gets back its own ``training`` flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """``torch.set_num_threads(n)`` inside (None keeps the current count); yields the count in use
    and restores the old one afterwards."""
    old = torch.get_num_threads()
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"threads={n!r} must be a positive int, e.g. 2")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)
