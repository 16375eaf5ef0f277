"""Depth pruning: remove whole repeated blocks (decoder or encoder layers) ranked by how little they
change the hidden state (Block Influence, as in ShortGPT, Men et al. 2024).

A block's influence is ``1 - cos(h_in, h_out)`` averaged over every token of the calibration batches,
from one forward pass of the unchanged model: a block whose output points where its input did adds
little. The lowest-ranked blocks are removed from their ``nn.ModuleList``; a Hugging Face config is
updated (``num_hidden_layers``, ``layer_types``) and the kept layers are renumbered (``layer_idx``), so
``save_pretrained`` writes a model that ``from_pretrained`` loads and generates with, prunekit not needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from prunekit._checks import fraction
from prunekit.inputs import forward, modes

__all__ = ["DepthReport", "block_influence", "drop_blocks"]


@dataclass
class DepthReport:
    """What :func:`drop_blocks` did: ``removed`` (indices in the original numbering), ``influence``
    (one score per original block; empty when ``which`` was given), ``blocks_before`` / ``blocks_after``."""

    removed: list[int]
    influence: list[float] = field(default_factory=list)
    blocks_before: int = 0
    blocks_after: int = 0

    def __str__(self) -> str:
        scores = ", ".join(f"{i}: {s:.4f}" for i, s in enumerate(self.influence))
        return (f"removed blocks {self.removed} ({self.blocks_before} -> {self.blocks_after})"
                + (f"; influence {scores}" if scores else ""))


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    from prunekit.recipes.oneshot import find_blocks

    found = find_blocks(model)
    if found is None:
        lists = [f"{n} ({len(m)} x {type(m[0]).__name__})" for n, m in model.named_modules()
                 if isinstance(m, nn.ModuleList) and len(m)]
        raise ValueError(f"{type(model).__name__} has no repeated blocks to remove (an nn.ModuleList of two or more "
                         f"same-type layers with Linear layers); found {lists or 'no ModuleList'}")
    return found


def _hidden(x: Any) -> torch.Tensor | None:
    x = x[0] if isinstance(x, (tuple, list)) and x else x
    return x if isinstance(x, torch.Tensor) and x.is_floating_point() else None


@torch.no_grad()
def block_influence(model: nn.Module, data: Iterable[Any]) -> list[float]:
    """``1 - cos(input, output)`` of each repeated block's hidden state, averaged over all tokens.

    Changes nothing (eval mode inside, restored).

    Example:
        >>> prunekit.structured.block_influence(llm, [{"input_ids": ids}])   # one score per decoder layer
    """
    _, blocks = _blocks(model)
    sums = [0.0] * len(blocks)
    counts = [0] * len(blocks)
    handles = []

    def hook(i):
        def record(module, args, kwargs, output):
            h_in = _hidden(args) if args else _hidden(kwargs.get("hidden_states"))
            h_out = _hidden(output)
            if h_in is None or h_out is None or h_in.shape != h_out.shape:
                raise ValueError(f"block {i} ({type(module).__name__}) does not map a hidden state to one of the same "
                                 "shape; depth pruning needs residual blocks")
            cos = nn.functional.cosine_similarity(h_in.float().flatten(0, -2), h_out.float().flatten(0, -2), dim=-1)
            sums[i] += float((1 - cos).sum())
            counts[i] += cos.numel()
        return record

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(hook(i), with_kwargs=True))
    try:
        with modes(model):
            seen = 0
            for batch in data:
                forward(model, batch)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("data is empty: block influence needs calibration batches, e.g. 8 x 512 tokens")
    return [s / max(c, 1) for s, c in zip(sums, counts)]


def drop_blocks(model: nn.Module, data: Iterable[Any] | None = None, sparsity: float | None = None,
                which: Sequence[int] | None = None) -> DepthReport:
    """Remove whole repeated blocks, in place: the least influential ``sparsity`` of them, or ``which``.

    Changes: the blocks' ``nn.ModuleList`` loses the removed blocks; a Hugging Face config gets the new
    ``num_hidden_layers`` (and ``layer_types``), and every kept module's ``layer_idx`` its new position.
    A rejected call changes nothing.

    Args:
        model: a model with repeated blocks (``model.layers`` of Llama, ``encoder.layer`` of BERT...).
        data: calibration batches (as for :func:`prunekit.recipes.oneshot`), to rank the blocks by
            :func:`block_influence`; not needed with ``which``.
        sparsity: fraction of the blocks to remove, rounded to a count (at least one block is kept).
        which: the block indices to remove instead of ranking them.

    Returns:
        :class:`DepthReport`.

    Example:
        >>> report = prunekit.structured.drop_blocks(llm, batches, sparsity=0.1)   # 30 -> 27 layers
        >>> llm.save_pretrained("smaller")        # loads with AutoModelForCausalLM.from_pretrained
    """
    name, blocks = _blocks(model)
    n = len(blocks)
    if (sparsity is None) == (which is None):
        raise ValueError("give sparsity= (the fraction of blocks to remove, ranked by influence) or which= (their "
                         "indices), not both or neither")
    influence: list[float] = []
    if which is not None:
        removed = sorted({int(i) for i in which})
        if len(removed) != len(list(which)) or any(i < 0 or i >= n for i in removed):
            raise ValueError(f"which={list(which)} must be distinct block indices in [0, {n - 1}]")
    else:
        count = round(fraction(sparsity, "sparsity") * n)
        if data is None:
            raise ValueError("sparsity= ranks the blocks by influence and needs data=<calibration batches>; or pass "
                             "which=[indices]")
        influence = block_influence(model, data)
        order = sorted(range(n), key=lambda i: (influence[i], i))
        removed = sorted(order[:count])
    if len(removed) >= n:
        raise ValueError(f"removing {len(removed)} of {n} blocks leaves none; keep at least one")
    kept = [i for i in range(n) if i not in set(removed)]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    config = getattr(model, "config", None)
    saved_config = None if config is None else {k: getattr(config, k, None) for k in ("num_hidden_layers", "layer_types")}
    indices = [(m, m.layer_idx) for b in blocks for m in b.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    new = nn.ModuleList([blocks[i] for i in kept])
    setattr(parent, attr, new)
    for position, block in enumerate(new):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    if config is not None and getattr(config, "num_hidden_layers", None) == n:
        config.num_hidden_layers = len(kept)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == n:
            config.layer_types = [types[i] for i in kept]
    problem = _config_mismatch(model)
    if problem:  # put everything back: the config cannot describe the remaining layers
        setattr(parent, attr, blocks)
        for module, index in indices:
            module.layer_idx = index
        for k, v in (saved_config or {}).items():
            if v is not None:
                setattr(config, k, v)
        raise ValueError(f"after removing blocks {removed}, {type(model).__name__}'s config no longer builds the "
                         f"same layers ({problem}): its config describes layers by index in ways prunekit does not "
                         "update (mixture-of-experts or hybrid layer plans); the model is unchanged")
    return DepthReport(removed, influence, n, len(kept))


def _config_mismatch(model: nn.Module) -> str | None:
    """For a Hugging Face model: the first difference between its tensors and those its config builds."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(type(model), "config_class"):
        return None
    import copy

    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(config))
    except Exception as e:
        return f"the config does not build: {type(e).__name__}: {e}"
    have = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("_mask")}
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    for k in sorted(set(have) | set(want)):
        if have.get(k) != want.get(k):
            return f"{k}: {have.get(k)} in the model, {want.get(k)} from the config"
    return None
