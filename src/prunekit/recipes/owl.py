"""OWL: outlier-weighted sparsity per block (Yin et al. 2024), for :func:`prunekit.recipes.oneshot`."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from prunekit._checks import fraction
from prunekit.inputs import modes
from prunekit.patterns import get_pattern
from prunekit.recipes._blocks import _blocks_and_targets, _model_stats
from prunekit.targets import Selector, Target

__all__ = ["owl_sparsities"]


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
    stats = _model_stats(model, batches, targets, full=False)
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
