"""Progress for long work on stderr: a rich bar on a terminal, else one plain line at a steady rate.

Outside a terminal (CI logs, `nohup`, a pipe) a line such as `encoding images: 120/500 (24%), 8.1/s, ETA 47s`
is written every `CRISIS_TOOL_PROGRESS_SECONDS` seconds (default 10) while the work runs; work shorter than
that writes nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

DEFAULT_INTERVAL_S = 10.0


def plain_interval() -> float:
    """Seconds between plain progress lines (`CRISIS_TOOL_PROGRESS_SECONDS`, default 10)."""
    try:
        value = float(os.environ.get("CRISIS_TOOL_PROGRESS_SECONDS", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@contextmanager
def _ticker(line: Callable[[float], str]) -> Iterator[None]:
    """Writes `line(elapsed)` to stderr every plain_interval() seconds until the block ends."""
    stop, start, interval = threading.Event(), time.monotonic(), plain_interval()

    def tick() -> None:
        while not stop.wait(interval):
            print(line(time.monotonic() - start), file=sys.stderr, flush=True)

    thread = threading.Thread(target=tick, name="crisis-tool-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def count_line(description: str, done: int, total: int, elapsed: float) -> str:
    """`description: done/total (pct), rate/s, ETA t` (the plain progress line)."""
    pct = 100 * done / total if total else 100.0
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f", ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
    return f"{description}: {done}/{total} ({pct:.0f}%), {rate:.1f}/s{eta}"


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`; a bar with ETA on a terminal, a plain line every few seconds otherwise."""
    if not sys.stderr.isatty():
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n

        with _ticker(lambda elapsed: count_line(description, done[0], total, elapsed)):
            yield advance
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


@contextmanager
def status_line(description: str) -> Iterator[Callable[[str], None]]:
    """Yields `update(message)`; a spinner on a terminal, else `description: message (elapsed)` every few seconds."""
    if not sys.stderr.isatty():
        latest = ["starting"]

        def update(message: str) -> None:
            latest[0] = message

        with _ticker(lambda elapsed: f"{description}: {latest[0]} ({_duration(elapsed)} elapsed)"):
            yield update
        return
    with Console(stderr=True).status(description) as status:
        yield lambda message: status.update(f"{description}: {message}")
