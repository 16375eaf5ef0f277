"""Perplexity of a causal language model on a token stream: fixed windows, a stride, a fixed seed.

The text is one long sequence of token ids. Windows of ``window`` tokens start every ``stride`` tokens
(``stride = window``: disjoint windows); with overlap, each window scores only the tokens the
previous one did not (Hugging Face's sliding-window evaluation), so every token is predicted once
with up to ``window - stride`` tokens of context before it. ``max_windows`` picks that many windows
with a seeded generator, the same ones for every model, so dense and pruned are compared on the same
tokens. Perplexity is ``exp`` of the mean negative log-likelihood over the scored tokens.

Example:
    >>> ids = tokenizer(text, return_tensors="pt").input_ids[0]
    >>> print(prunekit.perplexity.compare({"dense": dense, "50% sparsegpt": pruned}, ids, window=1024))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._checks import integer
from prunekit.inputs import modes

__all__ = ["perplexity", "compare", "Perplexity", "windows"]


@dataclass
class Perplexity:
    """``ppl`` (exp of ``nll``, the mean negative log-likelihood per scored token), the ``tokens``
    scored, the ``windows`` run, and the ``window`` / ``stride`` used."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    window: int
    stride: int

    def __str__(self) -> str:
        return (f"perplexity {self.ppl:.3f} over {self.tokens:,} tokens ({self.windows} windows of {self.window}, "
                f"stride {self.stride})")


def windows(n_tokens: int, window: int, stride: int, max_windows: int | None = None, seed: int = 0
            ) -> list[tuple[int, int, int]]:
    """``(begin, end, scored)`` per window: tokens ``[begin, end)`` run, the last ``scored`` are scored.

    Raises:
        ValueError: the text is shorter than one window (the message gives its length).
    """
    window = integer(window, "window", 2)
    stride = integer(stride, "stride", 1)
    if stride > window:
        raise ValueError(f"stride={stride} is longer than window={window}: tokens between windows would never be scored")
    if n_tokens < window:
        raise ValueError(f"the text has {n_tokens} tokens, shorter than one window={window}; give more text or "
                         f"a smaller window")
    spans, prev_end = [], 0
    for begin in range(0, n_tokens - window + 1, stride):
        end = begin + window
        scored = end - max(prev_end, begin + 1) if spans else window - 1
        spans.append((begin, end, scored))
        prev_end = end
    if max_windows is not None and integer(max_windows, "max_windows", 1) < len(spans):
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(spans), generator=g)[:max_windows].tolist())
        spans = [spans[i] for i in keep]  # an overlapping window still has window - stride tokens of context
    return spans


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    try:
        params = _parameters(model)
        if "input_ids" in params:  # Hugging Face; a cache is of no use to one pass per window
            out = model(input_ids=ids, **({"use_cache": False} if "use_cache" in params else {}))
        else:
            out = model(ids)
    except Exception as e:
        raise ValueError(f"the model does not run on token ids of shape {tuple(ids.shape)}: a causal LM returns logits "
                         f"of shape (batch, tokens, vocab); {type(e).__name__}: {e}") from e
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"the model must return logits of shape (batch, tokens, vocab) or an output with .logits; "
                         f"got {type(out).__name__}")
    return logits


def _parameters(model: nn.Module) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, window: int = 1024, stride: int | None = None,
               max_windows: int | None = None, seed: int = 0) -> Perplexity:
    """Perplexity of ``model`` on ``tokens`` (1-D token ids). Changes nothing (eval mode inside,
    every module's mode restored).

    Args:
        model: a causal LM: ``model(input_ids=ids).logits`` (Hugging Face) or ``model(ids)`` -> logits.
        tokens: the token ids of the evaluation text, one sequence.
        window: tokens per forward pass (context length).
        stride: step between windows (default ``window``: disjoint windows).
        max_windows: score only this many windows, drawn with ``seed`` (the same for every model).
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.is_floating_point():
        raise ValueError("tokens must be a 1-D tensor of token ids, e.g. tokenizer(text, return_tensors='pt').input_ids[0]")
    stride = window if stride is None else stride
    spans = windows(len(tokens), window, stride, max_windows, seed)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with modes(model):
        for begin, end, scored in spans:
            ids = tokens[begin:end].unsqueeze(0).to(device)
            logits = _logits(model, ids)[0, :-1].float()
            nll = F.cross_entropy(logits[-scored:], ids[0, 1:][-scored:], reduction="sum")
            total += float(nll)
            count += scored
    nll = total / count
    return Perplexity(math.exp(nll), nll, count, len(spans), window, stride)


def compare(models: Mapping[str, nn.Module], tokens: torch.Tensor, window: int = 1024, stride: int | None = None,
            max_windows: int | None = None, seed: int = 0) -> dict[str, Perplexity]:
    """:func:`perplexity` of each model on the same windows; ``str()`` of the values reads as a table.

    Example:
        >>> results = prunekit.perplexity.compare({"dense": dense, "pruned": pruned}, ids, window=512, max_windows=8)
        >>> results["pruned"].ppl / results["dense"].ppl
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {name: model}")
    return {name: perplexity(m, tokens, window, stride, max_windows, seed) for name, m in models.items()}
