"""A self-contained HTML page (charts inline as PNG, also written beside it) for a pruned model or an
advise run: per-layer sparsity, or quality vs measured speedup (the Pareto front, one-shot and recovered),
and the dense-vs-pruned table."""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any

from prunekit._io import check_output_path, write_bytes, write_text

__all__ = ["write_report"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _charts_for_layers(rows: list[tuple[str, float]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(rows))))
    names = [n for n, _ in rows][::-1]
    ax.barh(names, [s * 100 for _, s in rows][::-1], color="#3b7dd8")
    ax.set_xlabel("sparsity (% of weights that are zero)")
    ax.set_xlim(0, 100)
    ax.set_title("per-layer sparsity")
    ax.tick_params(axis="y", labelsize=7)
    data = _png(fig)
    plt.close(fig)
    return [("per_layer_sparsity", "Per-layer sparsity", data)]


def _charts_for_advice(advice: dict):
    """One chart, the trade itself: quality against measured speedup, one point per candidate (hollow:
    one-shot, filled: recovered, an arrow from one to the other), the Pareto front drawn through."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in advice["rows"] if not r.get("error")]
    by_name = {r["name"]: r for r in ok}
    quality = "eval_fn" if advice["quality_kind"] == "eval_fn" else "output cosine to dense"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([1.0], [advice["dense"]["quality"]], color="black", marker="s", label="dense")
    colors = {}
    for r in ok:
        recovered = r.get("recovered_from") is not None
        color = colors.setdefault(r.get("recovered_from") or r["name"], f"C{len(colors) % 10}")
        ax.scatter([r["speedup"]], [r["quality"]], s=40, label=r["name"], color=color,
                   facecolors=color if recovered else "none")
        src = by_name.get(r.get("recovered_from"))
        if src is not None:
            ax.annotate("", xy=(r["speedup"], r["quality"]), xytext=(src["speedup"], src["quality"]),
                        arrowprops={"arrowstyle": "->", "color": "gray"})
    front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r["speedup"])
    if front:
        ax.plot([r["speedup"] for r in front], [r["quality"] for r in front], color="gray", lw=1, ls="--",
                label="Pareto front")
    ax.set_xlabel("speedup over dense (measured in the same run)")
    ax.set_ylabel(f"quality ({quality})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    ax.set_title("quality vs measured speedup (hollow: one-shot, filled: recovered)")
    data = _png(fig)
    plt.close(fig)
    return [("quality_vs_speedup", "Quality vs measured speedup: the Pareto front", data)]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(source: Any, path: str | os.PathLike, title: str = "prunekit report") -> list[str]:
    """Write ``path`` (HTML, charts embedded) and one PNG per chart beside it; returns the files written.

    Args:
        source: a pruned ``nn.Module`` (per-layer sparsity chart and table), or an advise result
            (:class:`prunekit.advise.Advice` or its JSON dict: the quality vs measured speedup chart,
            the dense-vs-candidates table and the filled-in decision matrix).
        path: the ``.html`` file to write.
    """
    from torch import nn

    from prunekit.report import sparsity_report

    path = check_output_path(path, "path")
    if isinstance(source, nn.Module):
        rep = sparsity_report(source)
        layers = [(r.name, r.sparsity) for r in rep.rows if len(r.shape) >= 2]
        charts = _charts_for_layers(layers)
        tables = [("Dense vs pruned", _table(["", "parameters", "nonzeros", "sparsity"],
                                             [["dense", f"{rep.numel:,}", f"{rep.numel:,}", "0.0%"],
                                              ["pruned", f"{rep.numel:,}", f"{rep.nonzeros:,}", f"{rep.sparsity:.1%}"]])),
                  ("Layers", _table(["tensor", "shape", "nonzeros", "sparsity"],
                                    [[r.name, "x".join(map(str, r.shape)), f"{r.nonzeros:,}", f"{r.sparsity:.1%}"]
                                     for r in rep.rows]))]
    else:
        advice = source.to_dict() if hasattr(source, "to_dict") else dict(source)
        charts = _charts_for_advice(advice)
        d = advice["dense"]
        rows = [["dense (median of the runs)", "-", "0%", f"{d['latency_ms']:.2f}", "", "1.00x", "1.00x",
                 f"{d['quality']:.3f}", "", ""]]
        for r in advice["rows"]:
            if r.get("error"):
                rows.append([r["name"], r["method"], f"{r['sparsity']:.0%}", "failed", "", "", "", "", "",
                             r["error"][:80]])
            else:
                dense_ms = r.get("dense_ms")
                method = r["method"] + (f" ({r['note']})" if r.get("note") else "")
                rows.append([r["name"], method, f"{r['sparsity']:.0%}", f"{r['latency_ms']:.2f}",
                             "" if dense_ms is None else f"{dense_ms:.2f}", f"{r['speedup']:.2f}x",
                             f"{r['size_ratio']:.2f}x", f"{r['quality']:.3f}",
                             "" if r.get("recovered_quality") is None else f"{r['recovered_quality']:.3f}",
                             "Pareto" if r.get("pareto") else ""])
        tables = [("Dense vs candidates (measured on this machine; speedup = dense ms / latency ms of the same run)",
                   _table(["variant", "method", "sparsity", "latency ms", "dense ms", "speedup", "file", "quality",
                           "recovered", ""],
                          rows)),
                  ("Decision matrix, measured", _table(["scenario", "method", "target", "measured", "notes"],
                                                       [[m["scenario"], m["method"], m["target"], m["measured"],
                                                         m["notes"]] for m in advice["matrix"]]))]
    written = []
    stem = os.path.splitext(path)[0]
    figures = []
    for fname, caption, data in charts:
        png = f"{stem}-{fname}.png"
        write_bytes(png, data, "path")
        written.append(png)
        figures.append(f'<figure id="{fname}"><img alt="{html.escape(caption)}" '
                       f'src="data:image/png;base64,{base64.b64encode(data).decode()}"><figcaption>'
                       f"{html.escape(caption)}</figcaption></figure>")
    sections = "".join(f"<h2>{html.escape(t)}</h2>{body}" for t, body in tables)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(figures)}{sections}</body></html>")
    write_text(path, page, "path")
    return [path, *written]
