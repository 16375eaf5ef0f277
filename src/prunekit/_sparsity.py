"""The sparsity table (:class:`SparsityRow`, :class:`SparsityReport`), free of PyTorch so that
:func:`prunekit.sparsity_report` and :func:`prunekit.keras.sparsity_report` return the same thing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["SparsityRow", "SparsityReport"]


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
