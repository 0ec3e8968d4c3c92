"""Bench output: a rich table with the machine header, JSON, a Markdown table and a PNG chart (written atomically).

The terminal table and the Markdown table come from one column list (`report_lines.bench_columns`): by default
the columns that fit 80 terminal columns, with `wide` every column. The Markdown file always has every column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.text import Text

from crisis_tool.runtime.atomic_files import atomic_write_text
from crisis_tool.runtime.bench.report_lines import bench_columns, header_lines, with_reference
from crisis_tool.runtime.table_columns import markdown_table, rich_table, shown_columns


def render_table(result: dict[str, Any], wide: bool = False) -> Group:
    """Header lines + one table row per result row. By default only the rows that ran (the others are listed
    below the table, one line per backend) and the columns that fit 80 terminal columns."""
    rows = with_reference(result)
    ran = rows if wide else [r for r in rows if r["status"] == "ok"]
    columns = shown_columns(bench_columns(rows), ran, wide)
    table = rich_table(columns, ran, styles=[None if r["status"] == "ok" else "dim" for r in ran])
    parts: list[Any] = [Text(line) for line in header_lines(result["header"], wide)]
    parts.append(table if ran else Text("no row ran"))
    reasons: dict[str, str] = {}
    for row in rows:
        if row["status"] != "ok":
            reasons.setdefault(row["choice"], row["status"])
    parts += [Text(f"  {choice}: {reason}") for choice, reason in reasons.items()]
    return Group(*parts)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Header and rows as JSON (written atomically)."""
    return atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def markdown(result: dict[str, Any]) -> str:
    """A GitHub Markdown table with every column, preceded by the machine header."""
    rows = with_reference(result)
    lines = [f"- {line}" for line in header_lines(result["header"])] + [""]
    return "\n".join(lines) + "\n" + markdown_table(shown_columns(bench_columns(rows), rows, wide=True), rows)


def write_markdown(result: dict[str, Any], path: str | Path) -> Path:
    """The Markdown table (written atomically)."""
    return atomic_write_text(path, markdown(result))


def write_plot(result: dict[str, Any], path: str | Path) -> Path:
    """A PNG of the run (matplotlib, from the `charts` extra): throughput and p50/p99 latency against batch size,
    one line per backend, and with task metrics the speed against macro-F1."""
    from crisis_tool.runtime.charts import bench_chart

    return bench_chart(result, path)
