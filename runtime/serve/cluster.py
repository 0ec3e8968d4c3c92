"""Reaching Ray: a local instance bound to the loopback interface, or an existing cluster (`--address`)."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from crisis_tool.runtime.errors import MissingDependencyError, UsageError

INSTALL_HINT = "pip install 'crisis-tool[serve]'"
# Ray's switch between "local only" and "may form a cluster"; off, the node's address is 127.0.0.1.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def require_ray(command: str) -> None:
    """MissingDependencyError (one line, exit 2) when Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise MissingDependencyError(f"`crisis-tool {command}` needs Ray: {INSTALL_HINT}")


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray already initialised in this process, else join `address`, else start a local Ray.

    A local Ray listens on 127.0.0.1 only (when this process had not imported Ray yet), without dashboard or
    usage reporting; whatever this call started is shut down when the block ends.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:  # read when ray is first imported: a local node then binds 127.0.0.1, not the LAN address
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    for name in ("ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()
