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

import sys
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
from prunekit.inputs import forward, modes
from prunekit.inputs import threads as threads_in_use
from prunekit.masks import Undo, attach, find_mask
from prunekit.patterns import NM, Unstructured, get_pattern
from prunekit.pruning import prune
from prunekit.report import SparsityReport, sparsity_report
from prunekit.targets import Selector, Target, find_targets

__all__ = ["oneshot", "find_blocks", "magnitude_mask", "wanda_mask", "sparsegpt_prune", "owl_sparsities"]

METHODS = ("sparsegpt", "wanda", "magnitude")
_SORT_ELEMENTS = 1 << 22  # Wanda sorts this many scores at a time


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


def _run(model, batch, i):
    try:
        forward(model, batch)
    except _Stop:
        raise
    except Exception as e:
        raise ValueError(f"calibration batch {i} does not run the model: {type(e).__name__}: {e}") from e


def _whole_model(model, batches, targets, job: _Job):
    stats = dict(zip(map(id, targets), gather([t.module for t in targets], job.method == "sparsegpt")))
    try:
        for i, batch in enumerate(batches):
            _run(model, batch, i)
    finally:
        for st in stats.values():
            st.remove()
    _prune_layers(targets, stats, job, job.sparsity)
    job.bar.update(1)


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


def _check_layer_sparsity(layer_sparsity, blocks, pat, owl_m, owl_lambda) -> list[float] | str | None:
    """None (uniform), ``"owl"`` or one validated sparsity per block."""
    if isinstance(layer_sparsity, str):
        if layer_sparsity not in ("uniform", "owl"):
            raise ValueError(f"layer_sparsity={layer_sparsity!r} is unknown; use 'uniform', 'owl' or one sparsity "
                             "per block, e.g. [0.4, 0.5, 0.6]")
        if layer_sparsity == "uniform":
            return None
        if not (isinstance(owl_m, (int, float)) and owl_m > 0 and isinstance(owl_lambda, (int, float))
                and 0 <= owl_lambda < 0.5):
            raise ValueError(f"owl_m={owl_m!r} must be > 0 (e.g. 5) and owl_lambda={owl_lambda!r} in [0, 0.5) "
                             "(e.g. 0.08)")
    if pat.fixed_sparsity is not None:
        raise ValueError(f"layer_sparsity={layer_sparsity!r} needs pattern='unstructured': pattern='{pat}' fixes "
                         "every block's sparsity")
    if blocks is None:
        raise ValueError(f"layer_sparsity={layer_sparsity!r} needs repeated blocks (an nn.ModuleList of same-type "
                         "layers) and this model has none; use layer_sparsity='uniform'")
    if layer_sparsity == "owl":
        return "owl"
    if not isinstance(layer_sparsity, Sequence):
        raise TypeError(f"layer_sparsity={layer_sparsity!r} must be 'uniform', 'owl' or one sparsity per block "
                        "(a list); for one value for every block use sparsity=")
    values = list(layer_sparsity)
    if len(values) != len(blocks[1]):
        raise ValueError(f"layer_sparsity has {len(values)} values for the {len(blocks[1])} blocks of "
                         f"'{blocks[0]}'; give one per block")
    return [fraction(v, f"layer_sparsity[{i}]") for i, v in enumerate(values)]


def owl_sparsities(model: nn.Module, data: Iterable[Any], sparsity: float, owl_m: float = 5.0,
                   owl_lambda: float = 0.08, include: Selector = None, exclude: Selector = None) -> list[float]:
    """OWL's sparsity for each repeated block (Yin et al. 2024), from one dense forward pass over ``data``.

    A block's outlier ratio is the fraction of its Wanda scores ``|W| * ||X||`` above ``owl_m`` times
    their mean; ratios are scaled to ``[0, 2 owl_lambda]`` and block ``l`` gets
    ``sparsity - (r_l - mean(r))``, so the blocks average to ``sparsity``. Changes nothing. Pass the
    result as ``layer_sparsity=`` to :func:`oneshot` or :func:`oneshot_shards` (compute it on a model
    that fits, e.g. in bfloat16, then prune the full one from its shards).

    Example:
        >>> per_block = prunekit.recipes.owl_sparsities(llm, batches, 0.7)
        >>> prunekit.recipes.oneshot(llm, batches, method="wanda", sparsity=0.7, layer_sparsity=per_block)
    """
    sparsity = fraction(sparsity, "sparsity")
    blocks, targets = _blocks_and_targets(model, include, exclude)
    _check_layer_sparsity("owl", blocks, get_pattern("unstructured"), owl_m, owl_lambda)
    batches = list(data)
    if not batches:
        raise ValueError("data is empty: OWL needs calibration batches, e.g. 16 batches of 8 x 512 tokens")
    with modes(model), torch.no_grad():
        return _owl(model, blocks[1], batches, targets, sparsity, owl_m, owl_lambda)


def _owl(model, blocks: nn.ModuleList, batches: list, targets: list[Target], sparsity: float, m: float, lam: float):
    stats = dict(zip(map(id, targets), gather([t.module for t in targets])))
    try:
        for i, batch in enumerate(batches):
            _run(model, batch, i)
    finally:
        for st in stats.values():
            st.remove()
    ratios = []
    for block in blocks:
        inside = {id(mod) for mod in block.modules()}
        scores = torch.cat([(t.param.detach().float().abs().cpu() * stats[id(t)].norms()[None, :]).flatten()
                            for t in targets if id(t.module) in inside])
        ratios.append((scores > m * scores.mean()).double().mean().item())
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = r.max() - r.min()
    r = (r - r.min()) / spread * (2 * lam) if spread > 0 else torch.zeros_like(r)
    out = (sparsity - (r - r.mean())).tolist()
    bad = [(i, v) for i, v in enumerate(out) if not 0.0 <= v < 1.0]
    if bad:
        i, v = bad[0]
        raise ValueError(f"OWL gives block {i} sparsity {v:.3f} with sparsity={sparsity} and owl_lambda={lam}; every "
                         "block must stay in [0, 1) for the mean to be kept: lower owl_lambda (e.g. "
                         f"{max(0.0, min(sparsity, 1 - sparsity) / 2 - 0.005):.3f}) or the sparsity")
    return out
