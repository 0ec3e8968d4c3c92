"""The stdout console for tables: the terminal's width on a TTY, a wide fixed width for pipes and logs
(so tables are never ellipsised in CI logs or files)."""

from __future__ import annotations

from rich.console import Console

PIPE_WIDTH = 220


def stdout_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)
