"""``SparsityReport``: how sparse a model is, per parameter and overall."""

from __future__ import annotations

import torch
from torch import nn

from prunekit._sparsity import SparsityReport, SparsityRow
from prunekit.masks import effective, find_mask
from prunekit.targets import DEFAULT_TYPES, all_params, torch_pruned

__all__ = ["SparsityRow", "SparsityReport", "sparsity_report"]


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Count zeros in ``model`` as forward sees it (masks applied). Changes nothing.

    Example:
        >>> print(prunekit.sparsity_report(model))   # aligned table
        >>> prunekit.sparsity_report(model).sparsity
        0.9
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report = SparsityReport()
    legacy = {(id(m), f"{n}_orig"): n for _, m, n in torch_pruned(model)}  # torch.nn.utils.prune masks
    for t in all_params(model):
        plain = legacy.get((id(t.module), t.name))
        if plain is not None:  # count what forward sees (weight_orig * weight_mask), under the plain name
            with torch.no_grad():
                value = (t.param * getattr(t.module, f"{plain}_mask")).detach()
            n, nz = value.numel(), int(torch.count_nonzero(value))
            report.model_params += n
            report.model_nonzeros += nz
            name = f"{t.module_fqn}.{plain}" if t.module_fqn else plain
            report.rows.append(SparsityRow(name, tuple(value.shape), n, nz, 1.0 - nz / n if n else 0.0,
                                           "torch.nn.utils.prune"))
            continue
        value = effective(t.module, t.name)
        n, nz = value.numel(), int(torch.count_nonzero(value))
        report.model_params += n
        report.model_nonzeros += nz
        pm = find_mask(t.module, t.name)
        if pm is None and not (t.name == "weight" and isinstance(t.module, DEFAULT_TYPES)):
            continue
        report.rows.append(SparsityRow(t.fqn, tuple(value.shape), n, nz, 1.0 - nz / n if n else 0.0, pm.pattern if pm else "-"))
    return report
