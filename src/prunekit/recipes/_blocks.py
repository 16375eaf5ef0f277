"""A model's repeated blocks, and how their calls are captured and replayed one block at a time.

The repeated blocks are found generically: the largest ``nn.ModuleList`` of two or more same-type
children that contain Linear layers (``encoder.layer`` of BERT, ``model.layers`` of LLaMA,
``transformer.h`` of GPT-2). :func:`_capture` records what the model hands each block for every
calibration batch in one pass where probes stand in for the blocks (no block is computed), so a
block can then be run on its own, with its own keyword arguments (a sliding-window layer's mask),
and without the key/value cache of the pass.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from prunekit._stats import InputStats, gather
from prunekit.inputs import forward
from prunekit.targets import Selector, find_targets


class _Stop(Exception):
    pass


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's repeated blocks: the largest ModuleList of >= 2 same-type children with Linears."""
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or not any(isinstance(m, nn.Linear) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    return None if best is None else (best[1], best[2])


def _without_cache(kwargs: dict) -> dict:
    """The block's keyword arguments without a key/value cache.

    A Hugging Face decoder hands each layer the cache of the whole forward pass (``cache`` or
    ``past_key_values``, a ``transformers.Cache``). Replaying the captured call would append every
    batch's keys and values to it: each later batch would attend to the earlier ones (wrong statistics)
    and memory would grow with every pass.
    """
    cache_types = ()
    if "transformers" in sys.modules:
        try:
            from transformers.cache_utils import Cache

            cache_types = (Cache,)
        except ImportError:  # pragma: no cover - older or partial transformers
            pass
    out = {}
    for key, value in kwargs.items():
        if cache_types and isinstance(value, cache_types):
            value = None
        elif key == "use_cache" and value is True:
            value = False
        out[key] = value
    return out


def _replace_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _run(model, batch, i):
    try:
        forward(model, batch)
    except _Stop:
        raise
    except Exception as e:
        raise ValueError(f"calibration batch {i} does not run the model: {type(e).__name__}: {e}") from e


class _Probe(nn.Module):
    """Stands in for block ``index`` in the capture pass: records the call and passes the hidden state on
    in the shape of a real block's output (the last probe stops the model)."""

    def __init__(self, index: int, calls: list, last: bool, like: Any):
        super().__init__()
        self.index, self.calls, self.last, self.like = index, calls, last, like

    def forward(self, *args, **kwargs):
        self.calls[self.index].append((args, _without_cache(kwargs)))
        if self.last:
            raise _Stop
        hidden = args[0] if args else kwargs["hidden_states"]
        if isinstance(self.like, (tuple, list)):
            return type(self.like)([hidden] + [None] * (len(self.like) - 1))
        return hidden


def _refill(slot: nn.ModuleList, modules: list[nn.Module]) -> None:
    while len(slot):
        del slot[len(slot) - 1]
    slot.extend(modules)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def _capture(model: nn.Module, slot: nn.ModuleList, batches: list, first: nn.Module, n: int):
    """What each calibration batch hands the blocks: ``(calls, kwargs_for)``.

    ``calls``: the (args, kwargs) of block 0 per batch. ``kwargs_for[i][b]``: the keyword arguments
    block ``i`` gets for batch ``b`` where some block's differ from block 0's (Gemma, Qwen2 and others
    give sliding-window layers their own mask and rotary embedding), else None. One pass of the model
    with every block replaced by a probe (no block is computed; the model stops at the last probe),
    after block 0 has run once to show what a block returns. ``slot`` holds the blocks (or one of
    them) and is restored.
    """
    original = list(slot)
    outputs: list = []

    def learn(module, args, output):
        outputs.append(output)
        raise _Stop

    calls: list[list] = [[] for _ in range(n)]
    try:
        _refill(slot, [first] + original[1:])
        handle = first.register_forward_hook(learn)
        try:
            try:
                _run(model, batches[0], 0)
            except _Stop:
                pass
        finally:
            handle.remove()
        if not outputs:
            raise ValueError("the calibration batches did not reach the model's repeated blocks")
        _refill(slot, [_Probe(i, calls, i == n - 1, outputs[0]) for i in range(n)])
        for i, batch in enumerate(batches):
            try:
                _run(model, batch, i)
            except _Stop:
                pass
    finally:
        _refill(slot, original)
    if any(len(c) != len(batches) for c in calls):
        raise ValueError("the calibration batches did not reach every repeated block once each")
    base = calls[0]
    kwargs_for, differ = [], False
    for i in range(n):
        mine = []
        for b, (_, kwargs) in enumerate(calls[i]):
            ref = base[b][1]
            kept = {k: (ref[k] if k in ref and _same(v, ref[k]) else v) for k, v in kwargs.items()}
            differ |= kept.keys() != ref.keys() or any(kept[k] is not ref[k] for k in kept)
            mine.append(kept)
        kwargs_for.append(mine)
    return base, (kwargs_for if differ else None)


def _with_kwargs(captured: list, kwargs_for_block: list[dict]) -> list:
    """The captured calls with each batch's keyword arguments replaced by the block's own."""
    out = []
    for (args, kwargs), mine in zip(captured, kwargs_for_block):
        if not args and "hidden_states" in kwargs:  # the hidden state travels as a keyword
            mine = {**mine, "hidden_states": kwargs["hidden_states"]}
        out.append((args, mine))
    return out


def _blocks_and_targets(model: nn.Module, include: Selector, exclude: Selector):
    """The repeated blocks (or None) and the Linear targets inside them (all Linears without blocks)."""
    blocks = find_blocks(model)
    targets = [t for t in find_targets(model, include if include is not None else nn.Linear, exclude)
               if isinstance(t.module, nn.Linear)]
    if blocks is not None:
        inside = {id(m) for m in blocks[1].modules()}
        targets = [t for t in targets if id(t.module) in inside]
    if not targets:
        raise ValueError("no Linear layers to prune: check include/exclude")
    return blocks, targets


def _model_stats(model: nn.Module, batches: list, targets: list, full: bool) -> dict[int, InputStats]:
    """{id(target): its input statistics} from one pass of the whole model over ``batches``."""
    stats = dict(zip(map(id, targets), gather([t.module for t in targets], full)))
    try:
        for i, batch in enumerate(batches):
            _run(model, batch, i)
    finally:
        for st in stats.values():
            st.remove()
    return stats
