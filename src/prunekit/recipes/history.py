"""A per-round record of a recipe, printable as a table."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["History"]


@dataclass
class History:
    """Rows of ``{"round", "sparsity", "metric", "seconds", ...}``; round 0 is the starting model."""

    rows: list[dict] = field(default_factory=list)

    def append(self, **row) -> dict:
        self.rows.append(row)
        return row

    @property
    def final(self) -> dict:
        return self.rows[-1]

    def to_dict(self) -> dict:
        return {"rows": self.rows}

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        if not self.rows:
            return "(empty history)"
        keys = list(self.rows[0])
        for r in self.rows:
            keys += [k for k in r if k not in keys]

        def cell(v):
            if isinstance(v, float):
                return f"{v:.4f}"
            return "-" if v is None else str(v)

        table = [keys] + [[cell(r.get(k)) for k in keys] for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(keys))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table)
