"""The bound on connections waiting for a request head (`connection_guard`), inside Ray Serve's HTTP proxies.

Ray Serve's proxy runs its own uvicorn, which closes idle kept-alive connections but never one that does not
complete a request head. When a proxy starts it calls the function named by
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` (Ray's hook for proxy middlewares); `install` is that function:
it makes the guarded h11 protocol uvicorn's default in that process and returns no middleware. `proxy_env` is
what `server.controller_options` gives Serve's controller, whose environment the proxies inherit. If
installing fails, the proxy runs as Ray made it and says so in its log.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from crisis_tool.runtime.serve.connection_guard import WaitingConnections, guarded_protocol, most_waiting

CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
TIMEOUT_VARIABLE = "CRISIS_SERVE_HEAD_TIMEOUT_S"
GuardedProtocol: type | None = None  # set by `install`, in the proxy's process
waiting: WaitingConnections | None = None
logger = logging.getLogger(__name__)


def proxy_env(timeout_s: float) -> dict[str, str]:
    """Environment for Serve's controller (and so its proxies): the callback, and the head deadline."""
    return {CALLBACK_VARIABLE: f"{__name__}.install", TIMEOUT_VARIABLE: f"{timeout_s:g}"}


def install() -> list[Any]:
    """Make uvicorn's default HTTP protocol in this process the guarded one; no middleware."""
    global GuardedProtocol, waiting
    try:
        import uvicorn.config

        waiting = WaitingConnections(float(os.environ[TIMEOUT_VARIABLE]), most_waiting())
        GuardedProtocol = guarded_protocol(waiting)
        uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedProtocol"
    except Exception as exc:  # noqa: BLE001 - the proxy must start, guarded or not
        logger.warning("crisis-tool: this Ray Serve proxy has no request-head deadline (%s: %s)",
                       type(exc).__name__, exc)
    return []
