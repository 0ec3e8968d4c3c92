"""One column list, two renderings: a rich table for the terminal and a GitHub Markdown table for files.

A `Column` turns a row (a dict) into one cell of text. `default` columns are the ones that fit 80 terminal
columns; `wide` shows every column. An `optional` column is left out when no row gives it a value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table

MISSING = "-"
Row = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """A table column: its header label and how a row becomes its cell ('' or None: missing)."""

    label: str
    cell: Callable[[Row], str | None]
    default: bool = True
    left: bool = False
    optional: bool = False

    def text(self, row: Row) -> str:
        """The cell's text, '-' when the row has no value."""
        value = self.cell(row)
        return value if value else MISSING


def shown_columns(columns: Sequence[Column], rows: Sequence[Row], wide: bool = False) -> list[Column]:
    """The default columns (every column when `wide`), less the optional ones that no row fills."""
    return [c for c in columns if (wide or c.default) and not (c.optional and not any(c.cell(r) for r in rows))]


def rich_table(columns: Sequence[Column], rows: Sequence[Row], title: str | None = None,
               styles: Sequence[str | None] | None = None) -> Table:
    """A compact rich table (no vertical rules): cells never ellipsised; long text cells wrap instead."""
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True)
    for column in columns:
        table.add_column(column.label, justify="left" if column.left else "right", no_wrap=not column.left,
                         overflow="fold")
    for i, row in enumerate(rows):
        table.add_row(*(c.text(row) for c in columns), style=styles[i] if styles else None)
    return table


def wide_enough(console: Console, renderable: RenderableType) -> Console:
    """`console`, or one as wide as the tables in `renderable` (a Table or a Group) need when that is wider: a
    `--wide` table is never squeezed; the terminal wraps its lines instead."""
    parts = renderable.renderables if isinstance(renderable, Group) else [renderable]
    options = console.options.update_width(10_000)
    needed = max((console.measure(t, options=options).maximum for t in parts if isinstance(t, Table)), default=0)
    if needed <= console.width:
        return console
    return Console(width=needed, file=console.file, force_terminal=console.is_terminal,
                   color_system=console.color_system if console.color_system else None)  # type: ignore[arg-type]


def _md_cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, line breaks as spaces."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or MISSING


def markdown_table(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    """A GitHub Markdown table (header, alignment row, one line per row) from the same columns."""
    lines = ["| " + " | ".join(_md_cell(c.label) for c in columns) + " |",
             "|" + "|".join(":---" if c.left else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(c.text(row)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
