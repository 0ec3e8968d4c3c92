"""Ctrl-C (or SIGTERM) that ends a run within a second, whatever its worker threads are doing.

Python turns SIGINT into KeyboardInterrupt in the main thread, but only when that thread next runs Python
code, and at exit it joins worker threads (a decode pool, a backend's threads) that may be busy. Inside
`prompt_interrupt`, Python's C-level signal handler also writes to a wake-up socket; a watcher thread reading
it gives the main thread `grace_s` to unwind (its `finally` blocks keep partial outputs as they should), then
calls the registered cleanups, prints the one-line message unless it was printed, and ends the process
with exit code 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator

from crisis_tool.runtime.errors import CrisisToolError

EXIT_INTERRUPTED = 130
_reported = threading.Event()
_armed = threading.Event()  # inside `prompt_interrupt`
_cleanups: list[Callable[[], None]] = []


class Interrupted(CrisisToolError):
    """The user pressed Ctrl-C; the message says what was kept (exit 130)."""

    exit_code = EXIT_INTERRUPTED


def report_interrupt(message: str = "interrupted") -> None:
    """Print "error: <message>" on stderr once per process (the watcher and the CLI share it)."""
    if not _reported.is_set():
        _reported.set()
        print(f"error: {message}", file=sys.stderr, flush=True)


def on_forced_exit(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Run `cleanup` if the watcher has to end the process; returns a function that unregisters it."""
    _cleanups.append(cleanup)
    return lambda: _cleanups.remove(cleanup) if cleanup in _cleanups else None


def _watch(reader: socket.socket, grace_s: float) -> None:
    try:
        while True:
            data = reader.recv(64)
            if not data:
                return  # the context ended normally
            if signal.SIGINT in data or signal.SIGTERM in data:
                break
    except OSError:
        return
    threading.Event().wait(grace_s)  # the main thread unwinds, prints and exits in this time, normally
    for cleanup in list(_cleanups):
        with contextlib.suppress(Exception):
            cleanup()
    report_interrupt()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def sigterm_as_ctrl_c() -> None:
    """Within `prompt_interrupt`, make SIGTERM do what Ctrl-C does again, over a handler a library installed
    meanwhile (Ray's driver exits with code 15 after a C-level stack dump). A no-op outside the block."""
    if _armed.is_set() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


@contextlib.contextmanager
def prompt_interrupt(grace_s: float = 0.7) -> Iterator[None]:
    """Within the block, Ctrl-C or SIGTERM (a service manager, `docker stop`) ends the process at most
    `grace_s` after the main thread was asked to stop.

    A no-op outside the main thread. After a Ctrl-C the watcher stays armed past the block, so a slow exit
    (joining busy threads) is still cut short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    _armed.set()
    watcher = threading.Thread(target=_watch, args=(reader, grace_s), daemon=True, name="crisis-interrupt")
    watcher.start()
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        _armed.clear()
        signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(previous)
        if not interrupted:
            writer.close()  # the watcher sees end-of-file and stops
