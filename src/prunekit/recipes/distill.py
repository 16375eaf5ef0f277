"""The pieces of distillation that :func:`prunekit.recipes.recover` combines: what is compared
(the model's output, each repeated block's hidden states), how (KL on logits, cosine, MSE), and
int8 fake quantization for quantization-aware recovery.

Each piece works on any ``nn.Module``; the repeated blocks are found like one-shot pruning finds them
(:func:`prunekit.recipes.oneshot.find_blocks`), so a Hugging Face model needs no
``output_hidden_states`` and a plain module with an ``nn.ModuleList`` of blocks gets per-block losses too.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.inputs import call, first_tensor, modes
from prunekit.recipes.oneshot import find_blocks

__all__ = ["Capture", "output_of", "has_logits", "output_loss", "hidden_loss", "FakeQuant", "fake_quant_rows", "fake_quant_tokens"]

OUTPUT_LOSSES = ("auto", "kl", "cosine", "mse")


class Capture:
    """Forward hooks that keep the output of each repeated block of ``model`` (a list, in block order).

    Example:
        >>> with Capture(model) as hidden:
        ...     model(x)
        >>> len(hidden.states) == len(find_blocks(model)[1])
    """

    def __init__(self, model: nn.Module):
        found = find_blocks(model)
        self.blocks = [] if found is None else list(found[1])
        self.name = None if found is None else found[0]
        self.states: list[torch.Tensor] = []
        self._handles = []

    def _hook(self, module, args, out):
        h = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(h, torch.Tensor):
            self.states.append(h)

    def __enter__(self) -> "Capture":
        self.states = []
        self._handles = [b.register_forward_hook(self._hook) for b in self.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def output_of(model: nn.Module, batch: Any) -> torch.Tensor:
    """What distillation compares at the output: ``logits`` when the output has them, else the
    tensor it leads with (see :func:`prunekit.inputs.first_tensor`)."""
    out = call(model, batch)  # a Labeled batch runs on its inputs (inputs.split)
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    t = first_tensor(out)
    if t is None:
        raise ValueError(f"the model's output ({type(out).__name__}) holds no tensor to distill; pass "
                         "outputs=lambda model, batch: <the tensor to compare>")
    return t


def has_logits(model: nn.Module, batch: Any) -> bool:
    """Whether ``model``'s output on ``batch`` carries ``logits`` (a classifier or language model)."""
    with torch.no_grad():
        out = call(model, batch)  # a Labeled batch runs on its inputs (inputs.split)
    return isinstance(getattr(out, "logits", None), torch.Tensor)


def output_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``"kl"``: KL(teacher || student) of the softmax over the last dimension at ``temperature``
    (scaled by T^2, Hinton et al.); ``"cosine"``: mean ``1 - cosine`` over the last dimension;
    ``"mse"``: mean squared error divided by the teacher's variance."""
    s, t = student.float(), teacher.float()
    if kind == "kl":  # every position of every sequence is one distribution
        s2, t2 = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        return F.kl_div(F.log_softmax(s2 / temperature, -1), F.log_softmax(t2 / temperature, -1), log_target=True,
                        reduction="batchmean") * temperature**2
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(s, t) / t.var().clamp_min(1e-12)
    raise ValueError(f"output_loss={kind!r} is unknown; use one of {list(OUTPUT_LOSSES)}")


def hidden_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of the MSE between hidden states, each divided by the teacher block's variance
    (so every block counts alike, whatever its scale)."""
    terms = [F.mse_loss(s.float(), t.float()) / t.float().var().clamp_min(1e-12) for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def fake_quant_rows(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output row (scale = max |w| / 127), as prunekit's int8 kernels store weights;
    straight-through gradient. Zeros stay exactly zero."""
    scale = (w.detach().abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12)
    q = (w / scale).round().clamp(-127, 127) * scale
    return w + (q - w).detach()


def fake_quant_tokens(x: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per token (last dimension), as the int8 kernels quantize activations; straight-through."""
    scale = (x.detach().abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12)
    q = (x / scale).round().clamp(-127, 127) * scale
    return x + (q - x).detach()


def _quantized_forward(self, x):
    return F.linear(fake_quant_tokens(x), fake_quant_rows(self.weight), self.bias)


class FakeQuant:
    """Make the Linear layers chosen by ``select(module) -> bool`` compute with int8-rounded weights and
    activations (straight-through gradients) until :meth:`remove`. Changes only each layer's
    ``forward`` (an instance attribute, removed afterwards): weights, masks and state dicts are untouched.

    Example:
        >>> fq = FakeQuant(model, lambda m: isinstance(m, nn.Linear)); train(model); fq.remove()
    """

    def __init__(self, model: nn.Module, select: Callable[[nn.Module], bool]):
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear) and select(m)]
        for m in self.layers:
            m.forward = types.MethodType(_quantized_forward, m)

    def remove(self) -> None:
        for m in self.layers:
            m.__dict__.pop("forward", None)
        self.layers = []


def check_pair(student, teacher, batch, run, kind) -> str:
    """Run both once (eval mode, no grad, modes restored): same output shape and block structure."""
    with torch.no_grad(), modes(student), modes(teacher):
        try:
            with Capture(teacher) as ct:
                t = run(teacher, batch)
        except Exception as e:
            raise ValueError(f"the first data batch does not run the teacher: {type(e).__name__}: {e}") from e
        try:
            with Capture(student) as cs:
                s = run(student, batch)
        except Exception as e:
            raise ValueError(f"the first data batch does not run the student: {type(e).__name__}: {e}") from e
    if s.shape != t.shape:
        raise ValueError(f"teacher and student do not match: the teacher's output has shape {tuple(t.shape)}, the "
                         f"student's {tuple(s.shape)} (another vocabulary or number of classes?)")
    if len(cs.states) != len(ct.states):
        raise ValueError(f"teacher and student do not match: the teacher has {len(ct.blocks)} repeated blocks, the "
                         f"student {len(cs.blocks)}; pass hidden_weight=0 to distill the output only")
    for i, (a, b) in enumerate(zip(cs.states, ct.states)):
        if a.shape != b.shape:
            raise ValueError(f"teacher and student do not match: block {i} gives hidden states of shape "
                             f"{tuple(b.shape)} in the teacher, {tuple(a.shape)} in the student (another hidden "
                             "size?); pass hidden_weight=0 to distill the output only")
    if kind == "auto":
        return "kl" if run is output_of and has_logits(teacher, batch) else "cosine"
    return kind


def teacher_targets(teacher, batch, run, hidden_weight, amp, cache, index):
    """The teacher's output and hidden states for ``batch`` (detached), from ``cache`` when it has them;
    kept there (by batch ``index``) while the cache stays under 2 GiB."""
    if cache is not None and index in cache:
        return cache[index]
    with torch.no_grad(), amp, Capture(teacher) as ct:
        out = run(teacher, batch)
    hidden = [h.detach() for h in ct.states] if hidden_weight else []
    result = (out.detach(), hidden)
    if cache is not None and index is not None:
        size = sum(t.numel() * t.element_size() for t in [result[0], *hidden])
        if size * (len(cache) + 1) <= 2 << 30:
            cache[index] = result
    return result
