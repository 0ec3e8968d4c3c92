"""Warnings and log records during one CLI run: one `warning: ...` line each, each distinct message once.

A run that starts other runs in-process (`crisis-tool demo`) is one run: the inner ones share its memory of what
was already said. The same message from three backends, Predictors or steps is printed once.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_said: set[tuple[str, str]] | None = None  # the messages of the run in progress (None: no run)


def first_time(kind: str, message: str) -> bool:
    """True the first time (kind, message) is seen in this run (always True outside a run)."""
    if _said is None:
        return True
    key = (kind, message)
    if key in _said:
        return False
    _said.add(key)
    return True


class _OncePerRun(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or first_time("log", record.getMessage())


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    text = str(message)
    if first_time("warning", text):
        print(f"warning: {text}", file=file or sys.stderr)


@contextmanager
def once_per_run() -> Iterator[None]:
    """Within the block, each distinct warning or log record (WARNING and up) reaches stderr once."""
    global _said
    if _said is not None:  # a run inside a run
        yield
        return
    root = logging.getLogger()
    added = None
    if not root.handlers:
        added = logging.StreamHandler(sys.stderr)
        added.setFormatter(_LevelFormatter())
        root.addHandler(added)
    once = _OncePerRun()
    handlers = list(root.handlers)
    for handler in handlers:
        handler.addFilter(once)
    _said = set()
    try:
        with warnings.catch_warnings():  # fresh registries: a later run in this process says it again
            warnings.showwarning = _show_warning
            yield
    finally:
        _said = None
        for handler in handlers:
            handler.removeFilter(once)
        if added is not None:
            root.removeHandler(added)
