"""One-shot pruning of transformers from calibration data: SparseGPT, Wanda, magnitude.

Sequential, block by block (as both papers do): the inputs of the first repeated block are captured
from the calibration batches; each block then runs on them with hooks that gather its Linear layers'
input statistics, its layers are pruned, and the block runs again with the pruned weights to produce
the next block's inputs, so errors do not compound and only one block's statistics are held at a
time. The repeated blocks are found generically: the largest ``nn.ModuleList`` of two or more
same-type children that contain Linear layers (``encoder.layer`` of BERT, ``model.layers`` of LLaMA,
``transformer.h`` of GPT-2). Without one, statistics come from one pass of the whole model.

* Wanda (Sun et al. 2023): score ``|W| * ||X||_2`` per input feature, pruned within each output row;
  weights are not updated.
* SparseGPT (Frantar & Alistarh 2023): with ``H = 2 X^T X / n + damp * I`` (``damp`` relative to the
  mean diagonal), columns are pruned left to right in lazy blocks; each column's error is spread over
  the columns not yet processed through the inverse Hessian's Cholesky factor, and the mask is chosen
  per block by ``w^2 / [H^-1]_jj^2`` (per run of M columns for N:M).

Counts are exact: a layer of N weights loses ``round(s * N)`` (rows or column blocks share the
rounding), and every run of M keeps N for ``"N:M"``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from prunekit._checks import fraction
from prunekit._compat import old_kwargs
from prunekit._progress import progress as progress_bar
from prunekit._stats import InputStats, gather
from prunekit.inputs import modes
from prunekit.inputs import threads as threads_in_use
from prunekit.masks import Undo, attach, find_mask
from prunekit.patterns import NM, Unstructured, get_pattern
from prunekit.pruning import prune
from prunekit.recipes._blocks import (
    _blocks_and_targets,
    _capture,
    _model_stats,
    _replace_hidden,
    _with_kwargs,
    find_blocks,
)
from prunekit.recipes.owl import _check_layer_sparsity, _owl, owl_sparsities
from prunekit.report import SparsityReport, sparsity_report
from prunekit.targets import Selector, Target

__all__ = ["oneshot", "find_blocks", "magnitude_mask", "wanda_mask", "sparsegpt_prune", "owl_sparsities"]

METHODS = ("sparsegpt", "wanda", "magnitude")
_SORT_ELEMENTS = 1 << 22  # Wanda sorts this many scores at a time


def _shares(total: int, parts: list[int], s: float) -> list[int]:
    """Split ``round(s * total)`` over consecutive parts so that every prefix is rounded exactly."""
    out, start = [], 0
    for n in parts:
        out.append(round(s * (start + n)) - round(s * start))
        start += n
    return out


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, sparsity: float, pattern, old: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask from Wanda scores ``|W| * norms`` (norms: L2 norm of each input feature)."""
    rows, cols = weight.shape
    scale = norms.float()[None, :]

    def score(r0: int, r1: int) -> torch.Tensor:  # a few rows at a time: a huge layer's scores are not all held
        s = weight[r0:r1].detach().float().abs() * scale
        return s if old is None else s.masked_fill(~old[r0:r1], -torch.inf)

    if isinstance(pattern, NM):
        keep = pattern.mask(score(0, rows), 1)
        return keep if old is None else keep & old
    k = torch.tensor(_shares(rows * cols, [cols] * rows, sparsity))
    keep = torch.empty(rows, cols, dtype=torch.bool)
    step = max(1, _SORT_ELEMENTS // cols)  # the sort's int64 indices stay ~32 MB on a huge layer
    for r0 in range(0, rows, step):
        order = torch.sort(score(r0, r0 + step), dim=1, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(cols).expand(order.shape[0], cols))
        keep[r0:r0 + step] = rank >= k[r0:r0 + step, None]
    return keep if old is None else keep & old  # a weight pruned before stays pruned


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern, old: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask of the largest ``|W|``: exactly ``round(sparsity * numel)`` zeros, or N of every M."""
    score = weight.detach().float().abs()
    if old is not None:
        score = score.masked_fill(~old, -torch.inf)
    if isinstance(pattern, NM):
        keep = pattern.mask(score, 1)
    else:
        keep = torch.ones(score.numel(), dtype=torch.bool)
        keep[torch.sort(score.flatten(), stable=True).indices[:round(sparsity * score.numel())]] = False
        keep = keep.view_as(score)
    return keep if old is None else keep & old


def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, pattern, blocksize: int = 128, percdamp: float = 0.01,
    old: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one Linear weight ``(out, in)`` with ``hessian = 2 X^T X / n``.

    Returns:
        ``(new_weight, keep_mask)``: the updated weight (zeros at pruned entries) and the mask.
    """
    W = weight.detach().float().clone(memory_format=torch.contiguous_format)
    rows, cols = W.shape
    H = hessian.float().clone(memory_format=torch.contiguous_format)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    pruned = torch.zeros_like(W, dtype=torch.bool)
    if isinstance(pattern, NM):
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
    starts = list(range(0, cols, blocksize))
    widths = [min(blocksize, cols - b) for b in starts]
    quota = _shares(rows * cols, [rows * w for w in widths], sparsity)
    for b0, width, k in zip(starts, widths, quota):
        b1 = b0 + width
        W1 = W[:, b0:b1].clone()
        Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hi = Hinv[b0:b1, b0:b1]
        d = torch.diag(Hi)
        M1 = torch.zeros_like(W1, dtype=torch.bool)
        forced = None if old is None else ~old[:, b0:b1]
        if not isinstance(pattern, NM):
            score = W1.square() / d.square()[None, :]
            if forced is not None:
                score = score.masked_fill(forced, -torch.inf)
            idx = torch.sort(score.flatten(), stable=True).indices[:k]
            M1.view(-1)[idx] = True
        for j in range(width):
            if isinstance(pattern, NM) and j % pattern.m == 0:
                score = W1[:, j:j + pattern.m].square() / d[j:j + pattern.m].square()[None, :]
                if forced is not None:
                    score = score.masked_fill(forced[:, j:j + pattern.m], -torch.inf)
                M1[:, j:j + pattern.m] = ~pattern.mask(score, 1)
            w = W1[:, j]
            q = w.masked_fill(M1[:, j], 0.0)
            Q1[:, j] = q
            err = (w - q) / Hi[j, j]
            W1[:, j:] -= err[:, None] * Hi[j, j:][None, :]
            E1[:, j] = err
        W[:, b0:b1] = Q1
        pruned[:, b0:b1] = M1
        W[:, b1:] -= E1 @ Hinv[b0:b1, b1:]
    keep = ~pruned
    if old is not None:
        keep &= old
    return W.masked_fill(~keep, 0.0).to(weight.dtype), keep


@dataclass
class _Job:
    """What every block is pruned with, and what a failure must undo."""

    method: str
    sparsity: float
    pattern: Any
    blocksize: int
    percdamp: float
    undo: Undo
    bar: Any
    per_block: list[float] | None = None
    masks: bool = True  # False: zero the pruned weights in place instead of attaching masks

    def sparsity_of(self, index: int) -> float:
        return self.sparsity if self.per_block is None else self.per_block[index]


def _check_method(method: str, pattern: str, sparsity: float | None, blocksize: int, percdamp: float):
    """The pattern object and the sparsity, or a ValueError naming the argument (shared with oneshot_shards)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {list(METHODS)}")
    pat = get_pattern(pattern)
    if not isinstance(pat, (Unstructured, NM)):
        raise ValueError(f"pattern={pattern!r}: one-shot methods support 'unstructured' and 'N:M' (e.g. '2:4')")
    if sparsity is None:
        if pat.fixed_sparsity is None:
            raise ValueError("sparsity is required for pattern='unstructured', e.g. sparsity=0.5")
        sparsity = pat.fixed_sparsity
    sparsity = fraction(sparsity, "sparsity")
    if pat.fixed_sparsity is not None and abs(sparsity - pat.fixed_sparsity) > 1e-9:
        raise ValueError(f"pattern='{pat}' always gives sparsity {pat.fixed_sparsity}; got sparsity={sparsity}")
    if blocksize < 1 or not 0 <= percdamp < 1:
        raise ValueError(f"blocksize={blocksize} must be >= 1 and percdamp={percdamp} in [0, 1)")
    return pat, sparsity


def _prune_layers(targets: list[Target], stats: dict[int, InputStats] | None, job: _Job, s: float):
    method, pattern, blocksize, percdamp = job.method, job.pattern, job.blocksize, job.percdamp
    for t in targets:
        job.undo.touch(t)
        st = None if stats is None else stats[id(t)]
        pm = find_mask(t.module, t.name)
        old = None if pm is None else pm.mask.cpu()
        if method == "magnitude":
            keep = magnitude_mask(t.param.detach().cpu(), s, pattern, old)
        elif method == "wanda":
            keep = wanda_mask(t.param.detach().cpu(), st.norms(), s, pattern, old)
        else:
            try:
                new, keep = sparsegpt_prune(t.param.detach().cpu(), st.hessian(), s, pattern, blocksize, percdamp, old)
            except torch.linalg.LinAlgError:
                raise ValueError(
                    f"SparseGPT: the calibration Hessian of '{t.fqn}' is not positive definite ({st.n} input rows for "
                    f"{t.param.shape[1]} features, percdamp={percdamp}); raise percdamp (e.g. 0.01) or give more "
                    "calibration data. The model is unchanged"
                ) from None
            with torch.no_grad():
                t.param.copy_(new.to(t.param.device))
        if job.masks:
            attach(t, keep.to(t.param.device), str(pattern))
        else:
            with torch.no_grad():
                t.param.masked_fill_(~keep.to(t.param.device), 0.0)


def oneshot(
    model: nn.Module,
    data: Iterable[Any] = None,
    method: str = "sparsegpt",
    sparsity: float | None = 0.5,
    pattern: str = "unstructured",
    include: Selector = None,
    exclude: Selector = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    layer_sparsity: str | Sequence[float] = "uniform",
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    progress: bool = False,
    threads: int | None = None,
    **deprecated,
) -> SparsityReport:
    """Prune a pretrained model in one shot from calibration inputs (no retraining).

    Changes: attaches prunekit masks to the Linear layers inside the model's repeated blocks (all
    Linear layers when it has none); SparseGPT also updates the kept weights. Finalize, save and
    benchmark as usual. A rejected call changes nothing.

    Args:
        model: e.g. a Hugging Face ``BertModel`` or ``LlamaForCausalLM``.
        data: calibration batches, each one input (see :mod:`prunekit.inputs`): tensors
            (``model(x)``) or dicts of tensors (``model(**batch)``), e.g. a few hundred tokenized
            sentences in batches (``calibration=`` is its deprecated name). Not needed for ``"magnitude"``.
        method: ``"sparsegpt"``, ``"wanda"`` or ``"magnitude"`` (per-layer, no data needed).
        sparsity: fraction of each layer's weights to prune, in [0, 1); optional for ``"N:M"``.
        pattern: ``"unstructured"`` or ``"N:M"`` (``"2:4"``, ``"4:8"``) along the input dimension.
        include, exclude: narrow the layers (as for ``prunekit.prune``).
        blocksize: SparseGPT's lazy-update block width.
        percdamp: SparseGPT's damping, relative to the mean of the Hessian's diagonal.
        layer_sparsity: how ``sparsity`` is spread over the repeated blocks. ``"uniform"``: every block
            gets it. ``"owl"`` (Yin et al. 2024, outlier-weighted layerwise sparsity): blocks whose Wanda
            scores have more outliers (scores above ``owl_m`` times their block's mean) keep more weights,
            block sparsities span ``sparsity +- owl_lambda`` and average to ``sparsity``; costs one extra
            forward pass over ``data``. Or one sparsity per block, e.g. ``[0.4, 0.5, 0.6]``.
            Unstructured only (N:M fixes every block's sparsity).
        owl_m, owl_lambda: OWL's outlier threshold and the half-width of its sparsity range.
        progress: show a progress bar over the blocks.
        threads: ``torch.set_num_threads`` while pruning (restored afterwards); None keeps the current.

    Returns:
        :class:`prunekit.SparsityReport` of the model afterwards (``seconds``: time taken).

    Example:
        >>> batches = [tokenizer(texts[i:i + 16], padding=True, return_tensors="pt") for i in range(0, 128, 16)]
        >>> prunekit.recipes.oneshot(model, batches, method="sparsegpt", sparsity=0.5)
        >>> prunekit.recipes.oneshot(llm, batches, method="wanda", sparsity=0.7, layer_sparsity="owl")
    """
    data = old_kwargs("oneshot", deprecated, {"calibration": "data"}).get("data", data)
    pat, sparsity = _check_method(method, pattern, sparsity, blocksize, percdamp)
    blocks, targets = _blocks_and_targets(model, include, exclude)
    for t in targets:
        pat.check(t.param.shape, t.fqn, t.out_dim, t.in_dim)
    per_block = _check_layer_sparsity(layer_sparsity, blocks, pat, owl_m, owl_lambda)
    if method == "magnitude" and per_block is None:
        fqns = [t.fqn for t in targets]
        return prune(model, sparsity if pat.fixed_sparsity is None else None, pattern=pat, scope="layer",
                     include=lambda m, f, names=set(fqns): f"{f}.weight" in names)
    batches = None if data is None else list(data)
    if (method != "magnitude" or per_block == "owl") and not batches:
        needs = "method='magnitude' with layer_sparsity='owl'" if method == "magnitude" else f"method={method!r}"
        raise ValueError(f"{needs} needs data=<calibration batches>, e.g. 8 batches of 16 tokenized sentences; "
                         f"data is {'empty' if batches is not None else 'None'}")

    started = time.perf_counter()
    bar = progress_bar(total=1 if blocks is None else len(blocks[1]), desc=f"oneshot {method}", unit="block",
                       enabled=progress)
    job = _Job(method, sparsity, pat, blocksize, percdamp, Undo(), bar)  # Undo: a failure puts every block back
    try:
        with threads_in_use(threads), modes(model), torch.no_grad():
            if per_block == "owl":
                per_block = _owl(model, blocks[1], batches, targets, sparsity, owl_m, owl_lambda)
            job.per_block = per_block
            if blocks is None:
                warnings.warn("no repeated blocks (nn.ModuleList of same-type layers) found: statistics come from "
                              "one pass of the whole model, all layers pruned together", stacklevel=2)
                _whole_model(model, batches, targets, job)
            else:
                _sequential(model, blocks[1], batches, targets, job)
    except BaseException:
        job.undo.restore()
        raise
    finally:
        bar.close()
    report = sparsity_report(model)
    report.seconds = time.perf_counter() - started
    return report


def _whole_model(model, batches, targets, job: _Job):
    stats = _model_stats(model, batches, targets, full=job.method == "sparsegpt")
    _prune_layers(targets, stats, job, job.sparsity)
    job.bar.update(1)


def _prune_block(block: nn.Module, captured: list, targets: list[Target], job: _Job, s: float) -> list:
    """Prune one block's ``targets`` from its inputs ``captured``; returns the next block's inputs."""
    if job.method == "magnitude":
        _prune_layers(targets, None, job, s)
        job.bar.update(1)
        return captured
    stats = dict(zip(map(id, targets), gather([t.module for t in targets], job.method == "sparsegpt")))
    try:
        for args, kwargs in captured:
            block(*args, **kwargs)
    finally:
        for st in stats.values():
            st.remove()
    _prune_layers(targets, stats, job, s)
    del stats
    job.bar.update(1)
    nxt = []
    for args, kwargs in captured:
        out = block(*args, **kwargs)
        hidden = out[0] if isinstance(out, (tuple, list)) else out
        nxt.append(_replace_hidden(args, kwargs, hidden))
    return nxt


def _sequential(model, blocks: nn.ModuleList, batches, targets, job: _Job):
    captured, kwargs_for = [], None
    if job.method != "magnitude":
        captured, kwargs_for = _capture(model, blocks, batches, blocks[0], len(blocks))
    for index, block in enumerate(blocks):
        inside = {id(m) for m in block.modules()}
        mine = [t for t in targets if id(t.module) in inside]
        if index and kwargs_for is not None:
            captured = _with_kwargs(captured, kwargs_for[index])
        captured = _prune_block(block, captured, mine, job, job.sparsity_of(index))

