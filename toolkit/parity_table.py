"""The parity table of `export` and `inspect`: one row per precision and graph, from one column list.

By default the columns that fit 80 terminal columns (prec(ision), graph, min cosine, top-1 with its 95% interval,
samples, gate); `wide` adds the chosen build (weight type), max abs, batches, limits, calibration source and why.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from crisis_tool.runtime.manifest import Manifest
from crisis_tool.runtime.table_columns import Column, Row, markdown_table, rich_table, shown_columns


def _top1(row: Row) -> str | None:
    value, interval = row.get("top1_agreement"), row.get("top1_interval")
    if value is None:
        return None
    text = f"{value:.3f}"
    if isinstance(interval, list | tuple) and len(interval) == 2:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def _gate(row: Row) -> str:
    if row.get("_not_validated") is not None:
        return "not run"  # the reason is in the table's caption
    return "pass" if row.get("passed") else "FAIL"


def _chosen(row: Row) -> str | None:
    return row.get("chosen") or row.get("weight_type") or row.get("built_as")


def _num(key: str, spec: str) -> Any:
    return lambda row: None if row.get(key) is None else format(row[key], spec)


PARITY_COLUMNS = (
    Column("prec", lambda r: r.get("_precision"), left=True),
    Column("graph", lambda r: r.get("_graph"), left=True),
    Column("min cos", _num("min_cosine", ".6f")),
    Column("top-1 [95% CI]", _top1),
    Column("n", _num("n", "d")),
    Column("gate", _gate, left=True),
    Column("chosen", _chosen, default=False, left=True, optional=True),
    Column("max abs", _num("max_abs", ".3g"), default=False),
    Column("batches", lambda r: ",".join(map(str, r.get("batches") or [])), default=False),
    Column("limits", lambda r: ", ".join(f"{k} {v:g}" for k, v in (r.get("limits") or {}).items()), default=False,
           left=True),
    Column("inputs", lambda r: r.get("calibration"), default=False, left=True, optional=True),
    Column("why", lambda r: r.get("why") or r.get("_not_validated"), default=False, left=True, optional=True),
)


def parity_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """One dict per (precision, graph) with its parity entry; a precision without one is a 'not validated' row."""
    rows: list[dict[str, Any]] = []
    for precision, report in manifest.parity.items():
        if not report:
            rows.append({"_precision": precision, "_graph": "-",
                         "_not_validated": str(manifest.validated.get(precision, ""))})
        for graph, entry in report.items():
            if isinstance(entry, dict):
                rows.append({**entry, "_precision": precision, "_graph": graph})
    return rows


def parity_table(manifest: Manifest, wide: bool = False) -> Table:
    """Parity numbers per precision and graph, with pass/fail (80 columns unless `wide`)."""
    rows = parity_rows(manifest)
    table = rich_table(shown_columns(PARITY_COLUMNS, rows, wide), rows, title="parity vs PyTorch (ONNX Runtime CPU)")
    notes = [f"{r['_precision']}: {r['_not_validated']}" for r in rows if r.get("_not_validated")]
    table.caption = "\n".join(notes) or None
    return table


def parity_markdown(manifest: Manifest) -> str:
    """The parity table as GitHub Markdown, every column."""
    rows = parity_rows(manifest)
    return markdown_table(shown_columns(PARITY_COLUMNS, rows, wide=True), rows)
