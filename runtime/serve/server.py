"""Starting and stopping the HTTP service: Ray Serve's proxy on `host:port` in front of the deployment."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.serve.cluster import ray_session, require_ray
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions


@dataclass(frozen=True)
class RunningServer:
    """A deployed application: its base URL and Serve application name."""

    url: str
    app_name: str


def check_port_free(host: str, port: int) -> None:
    """UsageError when `host:port` cannot be bound here (in use, or not an address of this machine)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def start_server(predictor_options: PredictorOptions, serve_options: ServeOptions) -> RunningServer:
    """Deploy on the Ray this process is connected to; returns once every replica has warmed up."""
    from ray import serve

    from crisis_tool.runtime.serve.deployment import build_app

    serve.start(
        http_options={"host": serve_options.host, "port": serve_options.port},
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    serve.run(build_app(predictor_options, serve_options), name=serve_options.app_name, route_prefix="/",
              blocking=False)
    host = f"[{serve_options.host}]" if ":" in serve_options.host else serve_options.host
    return RunningServer(f"http://{host}:{serve_options.port}", serve_options.app_name)


def serve_until_stopped(
    predictor_options: PredictorOptions,
    serve_options: ServeOptions,
    on_ready: Callable[[RunningServer], None],
    stop: threading.Event | None = None,
) -> None:
    """Serve until Ctrl-C, SIGTERM or `stop` is set, then delete the application (and the local Ray).

    Without `address` (a local Ray) the Predictor is first loaded and closed here, as `label` does, so a bad
    bundle, backend, precision or device is one usage line instead of failing replicas.
    """
    require_ray("serve")
    serve_options.validate()
    predictor_options.validate()
    if not serve_options.address:
        check_port_free(serve_options.host, serve_options.port)
        predictor_options.check()  # a bad bundle, backend or device: one line before Ray starts
    stop = stop or threading.Event()
    with ray_session(serve_options.address):
        from ray import serve

        # after ray.init, which installs its own SIGTERM handler in the driver
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None
        server = start_server(predictor_options, serve_options)
        try:
            on_ready(server)
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            serve.delete(server.app_name)
            if not serve_options.address:
                serve.shutdown()
            if in_main:
                signal.signal(signal.SIGTERM, previous)
