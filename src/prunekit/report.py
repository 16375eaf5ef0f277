"""``SparsityReport``: how sparse a model is, per parameter and overall."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from prunekit.masks import effective, find_mask
from prunekit.targets import DEFAULT_TYPES, all_params, torch_pruned

__all__ = ["SparsityRow", "SparsityReport", "sparsity_report"]


@dataclass
class SparsityRow:
    """One parameter: ``name`` (unpruned naming), ``shape``, ``numel``, ``nonzeros``, ``sparsity``
    (fraction of zeros) and ``pattern`` (the mask's pattern, ``"-"`` when not masked)."""

    name: str
    shape: tuple
    numel: int
    nonzeros: int
    sparsity: float
    pattern: str


@dataclass
class SparsityReport:
    """Per-parameter rows for every masked weight and every Linear/Conv weight, plus totals.

    Attributes:
        rows: one :class:`SparsityRow` each.
        numel / nonzeros / sparsity: over the rows (the prunable weights).
        model_params / model_nonzeros: over every parameter of the model (biases, norms, embeddings).
        seconds: wall time of the pruning call that returned this report (None from
            :func:`sparsity_report` itself).
    """

    rows: list[SparsityRow] = field(default_factory=list)
    model_params: int = 0
    model_nonzeros: int = 0
    seconds: float | None = None

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def nonzeros(self) -> int:
        return sum(r.nonzeros for r in self.rows)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0

    def __getitem__(self, name: str) -> SparsityRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows are {[r.name for r in self.rows][:8]}...")

    def to_dict(self) -> dict:
        """Plain data (JSON-ready): rows and totals."""
        return {
            "rows": [asdict(r) | {"shape": list(r.shape)} for r in self.rows],
            "numel": self.numel,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
            "model_params": self.model_params,
            "model_nonzeros": self.model_nonzeros,
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        head = ("parameter", "shape", "nonzeros", "sparsity", "pattern")
        body = [
            (r.name, "x".join(map(str, r.shape)) or "scalar", f"{r.nonzeros:,}/{r.numel:,}", f"{r.sparsity:.2%}", r.pattern)
            for r in self.rows
        ]
        total = ("total (these weights)", "", f"{self.nonzeros:,}/{self.numel:,}", f"{self.sparsity:.2%}", "")
        whole = (
            "whole model (all params)",
            "",
            f"{self.model_nonzeros:,}/{self.model_params:,}",
            f"{1 - self.model_nonzeros / max(self.model_params, 1):.2%}",
            "",
        )
        table = [head, *body, total, whole]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        right = {2, 3}

        def fmt(row):
            cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(head), rule, *map(fmt, body), rule, fmt(total), fmt(whole)])


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
