"""`crisis-tool serve --no-ray`: the same HTTP API from this one process, without Ray.

FastAPI on uvicorn, one Predictor, records of concurrent requests batched together (`BatchedService`), the
same hardening, auth, TLS and v2 routes as a Ray Serve replica. No proxy hop and no Ray processes: on one
small machine (a 2-core field laptop) that overhead is a large share of the CPU. No replicas or cluster; for
those, serve with Ray. Stopping (Ctrl-C, SIGTERM) drains as the Ray server does: new requests get 503 with
Retry-After while those in flight finish (at most `drain_s`), then the listener closes.

Also `python -m crisis_tool.runtime.serve.local_server --bundle B --port P` (the tests' server process).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import MissingDependencyError, UsageError
from crisis_tool.runtime.serve.batched_service import BatchedService
from crisis_tool.runtime.serve.connection_guard import WaitingConnections, guarded_protocol, most_waiting
from crisis_tool.runtime.serve.lifecycle import check_options, check_port_free, sigterm_sets, wait_until_stopped
from crisis_tool.runtime.serve.options import LOOPBACK, PredictorOptions, ServeOptions
from crisis_tool.runtime.serve.serve_totals import ServeTotals

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
KEEP_ALIVE_S = 5  # as Ray Serve's proxy
HTTP_HINT = "pip install 'crisis-tool[http]'"
__all__ = ["LocalService", "RunningLocal", "serve_local"]


class LocalService(BatchedService):
    """The single-process service: a BatchedService with plain totals, and the connections waiting for a
    request head (`connection_guard`: closed after --body-timeout-s, the oldest first beyond a bound)."""

    def __init__(self, predictor_options: PredictorOptions, serve_options: ServeOptions) -> None:
        super().__init__(predictor_options, serve_options, ServeTotals())
        self.waiting = WaitingConnections(serve_options.body_timeout_s, most_waiting())

    def guard_stats(self) -> dict[str, float]:
        return {**super().guard_stats(), "connections_waiting": len(self.waiting),
                "connections_closed": self.waiting.closed_total}


class RunningLocal:
    """A started single-process server: its URL and service (for `on_ready` and tests)."""

    def __init__(self, url: str, service: LocalService) -> None:
        self.url = url
        self.service = service


def require_http(command: str) -> None:
    """MissingDependencyError (one line) when FastAPI or uvicorn is missing."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"`crisis-tool {command}` needs {' and '.join(missing)}: {HTTP_HINT}")


def serve_local(
    predictor_options: PredictorOptions,
    serve_options: ServeOptions,
    on_ready: Callable[[RunningLocal], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Load, warm up and serve on `host:port` until Ctrl-C, SIGTERM or `stop`; then drain and close."""
    require_http("serve --no-ray")
    check_options(predictor_options, serve_options)
    check_port_free(serve_options.host, serve_options.port)
    service = LocalService(replace(predictor_options, batch_size=serve_options.batch_size), serve_options)
    try:
        service.warm_up()
        server, thread = _start_uvicorn(service, serve_options)
        stop = stop or threading.Event()
        try:
            with sigterm_sets(stop):
                if on_ready is not None:
                    on_ready(RunningLocal(serve_options.base_url, service))
                wait_until_stopped(stop, thread.is_alive)
                _drain(service, serve_options.drain_s)
        finally:
            server.should_exit = True
            thread.join(timeout=STOP_TIMEOUT_S)
    finally:
        service.predictor.close()


def _drain(service: LocalService, drain_s: float) -> None:
    """503 + Retry-After to new requests; wait (at most `drain_s`) for those in flight."""
    service.draining = True
    deadline = time.monotonic() + drain_s
    while service.in_flight > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


def _server_without_signals(config: Any) -> Any:
    """A uvicorn Server that leaves signals to `serve_local` (uvicorn's own would re-raise them after its
    shutdown, and it runs in a thread here anyway)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return Server(config)


def _start_uvicorn(service: LocalService, options: ServeOptions) -> tuple[Any, threading.Thread]:
    """uvicorn serving `build_api(service)` in a thread; returns once it listens (UsageError if it cannot)."""
    import uvicorn

    from crisis_tool.runtime.serve.api import build_api

    tls = options.tls_cert is not None
    config = uvicorn.Config(build_api(service, observe=service.metrics.request), host=options.host,
                            port=options.port, log_level="warning", access_log=False,
                            timeout_keep_alive=KEEP_ALIVE_S, lifespan="off", http=guarded_protocol(service.waiting),
                            ssl_certfile=str(options.tls_cert) if tls else None,
                            ssl_keyfile=str(options.tls_key) if tls else None)
    server = _server_without_signals(config)
    thread = threading.Thread(target=server.run, name="crisis-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise UsageError(f"cannot serve on {options.host}:{options.port} (uvicorn did not start)")
        time.sleep(0.02)
    return server, thread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--body-timeout-s", type=float, default=ServeOptions.body_timeout_s)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    serve_local(PredictorOptions(bundle=args.bundle.resolve(), threads=args.threads),
                ServeOptions(host=args.host, port=args.port, body_timeout_s=args.body_timeout_s))


if __name__ == "__main__":
    main()
