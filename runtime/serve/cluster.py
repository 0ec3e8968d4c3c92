"""Reaching Ray: a local instance bound to the loopback interface, or an existing cluster (`--address`)."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from crisis_tool.runtime.errors import MissingDependencyError, UsageError
from crisis_tool.runtime.interrupts import sigterm_as_ctrl_c

INSTALL_HINT = "pip install 'crisis-tool[serve]'"
# Ray's switch between "local only" and "may form a cluster"; off, the node's address is 127.0.0.1.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
BACKEND_LOG_LEVEL_ENV = "RAY_BACKEND_LOG_LEVEL"


class _ErrorsOnly(logging.Filter):
    """Drops records below ERROR: kept on the logger, so it holds when Ray resets the logger's level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_ERRORS_ONLY = _ErrorsOnly()


def set_library_log_level(verbose: bool) -> None:
    """Ray Data and Ray Serve log INFO (verbose) or only errors; call again after Ray Data is first used.

    Quiet, a filter also drops their notes when Ray sets the level back to INFO (`serve.start` does: "Started
    Serve", "New http_options will not be applied")."""
    for name in ("ray.data", "ray.serve"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO if verbose else logging.ERROR)
        if verbose:
            logger.removeFilter(_ERRORS_ONLY)
        else:
            logger.addFilter(_ERRORS_ONLY)


@contextmanager
def _stderr_closed(closed: bool) -> Iterator[None]:
    """Within the block, file descriptor 2 (C++ and Python writes alike) goes to /dev/null when `closed`."""
    if not closed:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _is_loopback(address: str) -> bool:
    """True for `127.x.x.x:PORT`, `localhost:PORT` and `[::1]:PORT` (a cluster on this machine only)."""
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_ray(command: str) -> None:
    """MissingDependencyError (one line, exit 2) when Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise MissingDependencyError(f"`crisis-tool {command}` needs Ray: {INSTALL_HINT}")


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, verbose: bool = False) -> Iterator[None]:
    """Use the Ray already initialised in this process, else join `address`, else start a local Ray.

    A local Ray listens on 127.0.0.1 only (when this process had not imported Ray yet), without dashboard or
    usage reporting; whatever this call started is shut down when the block ends. Ray's own messages are
    quiet (warnings of its Python loggers only, no C++ core-worker lines, no worker output) unless `verbose`.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not verbose:  # read when this process's core worker starts: its C++ log lines go to stderr
        os.environ.setdefault(BACKEND_LOG_LEVEL_ENV, "fatal")
    level = logging.INFO if verbose else logging.WARNING
    if not address or _is_loopback(address):  # read when ray is first imported: this node is then 127.0.0.1
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        with _stderr_closed(not verbose):  # start-up notes (log level set, token auth on) are not the user's
            if address:
                ray.init(address=address, logging_level=level, log_to_driver=verbose)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=level, log_to_driver=verbose)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    set_library_log_level(verbose)
    sigterm_as_ctrl_c()  # ray.init made SIGTERM exit at once (code 15, a C-level stack dump)
    try:
        yield
    finally:
        ray.shutdown()
