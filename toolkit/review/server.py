"""Assemble the review app from the command's arguments and serve it with uvicorn on a socket bound first."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import MissingDependencyError, UsageError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_web_stack() -> None:
    """MissingDependencyError (one line) unless starlette and uvicorn are installed."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"the review page needs {exc.name}: pip install 'crisis-tool[review]'") from None


def open_review(queue: Path, bundle: Path, labels: Path, image_root: Path | None = None,
                reviewer: str | None = None) -> Any:
    """The `ReviewState` of a queue, a bundle's heads and a corrections file (created when absent)."""
    from crisis_tool.review.app import ReviewState
    from crisis_tool.review.bundle_labels import labels_by_task
    from crisis_tool.review.queue import load_queue
    from crisis_tool.review.store import CorrectionStore
    from crisis_tool.runtime.atomic_files import refuse_overwriting_inputs
    from crisis_tool.runtime.bundle import Bundle

    if not queue.is_file():
        raise UsageError(f"--queue {queue} is not a file (write one with --review-queue)")
    refuse_overwriting_inputs(labels, [queue], flag="--labels")
    heads = labels_by_task(Bundle.load(bundle))
    items = load_queue(queue, heads, image_root)
    if not items:
        raise UsageError(f"--queue {queue} holds no post to review")
    return ReviewState(items, CorrectionStore(labels, reviewer=reviewer), heads)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); UsageError when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from None
    sock.listen(64)
    return sock


def serve(app: Any, sock: socket.socket) -> None:
    """Serve `app` on the bound socket until Ctrl-C."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
