"""The stdout console for tables: the terminal's width on a TTY or as `COLUMNS` says, else a wide fixed width for
pipes and logs (so tables are never ellipsised in CI logs or files)."""

from __future__ import annotations

import os

from rich.console import Console

PIPE_WIDTH = 220


def stdout_console() -> Console:
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit():
        return console
    return Console(width=PIPE_WIDTH)
