"""What both HTTP servers (Ray Serve's in `server`, the single-process one in `local_server`) do before they
start and while they run: check the options and the port, then wait for Ctrl-C, SIGTERM or a stop event.
No Ray here."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions

POLL_S = 0.5


def check_port_free(host: str, port: int) -> None:
    """UsageError when `host:port` cannot be bound here (in use, or not an address of this machine).

    SO_REUSEADDR as the server's own socket (uvicorn) sets it: connections of a stopped server still in
    TIME_WAIT do not block a restart on the same port; a socket listening there does."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def check_options(predictor_options: PredictorOptions, serve_options: ServeOptions) -> None:
    """UsageError for inconsistent options; the bind warning (non-loopback without a token) on stderr."""
    serve_options.validate()
    predictor_options.validate()
    warning = serve_options.bind_warning()
    if warning:
        print(warning, file=sys.stderr)


@contextlib.contextmanager
def sigterm_sets(stop: threading.Event) -> Iterator[None]:
    """In the main thread, SIGTERM sets `stop` while the block runs (the previous handler comes back after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until_stopped(stop: threading.Event, alive: Callable[[], bool] = lambda: True) -> None:
    """Return once `stop` is set, Ctrl-C arrives (KeyboardInterrupt in the main thread) or `alive()` is false."""
    try:
        while not stop.wait(POLL_S) and alive():
            pass
    except KeyboardInterrupt:
        stop.set()
