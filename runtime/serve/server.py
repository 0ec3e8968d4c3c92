"""Starting and stopping the HTTP service: Ray Serve's proxy on `host:port` (HTTPS with --tls-cert/--tls-key)
in front of the deployment. Stopping drains first: the replicas answer 503 + Retry-After to new requests while
those in flight finish (at most `drain_s`), then the application is deleted, and Serve itself (controller and
proxies) is shut down when this process started it: always with a local Ray, and on a cluster (`--address`)
where no Serve ran before, so a stopped `serve --address` leaves nothing of its own behind."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crisis_tool.runtime.serve.cluster import ray_session, require_ray
from crisis_tool.runtime.serve.lifecycle import check_options, check_port_free, sigterm_sets, wait_until_stopped
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions
from crisis_tool.runtime.serve.proxy_guard import proxy_env


@dataclass(frozen=True)
class RunningServer:
    """A deployed application: its base URL and Serve application name."""

    url: str
    app_name: str
    started_serve: bool = True  # this process started Serve's controller (and so shuts it down)


def start_server(predictor_options: PredictorOptions, serve_options: ServeOptions) -> RunningServer:
    """Deploy on the Ray this process is connected to; returns once every replica has warmed up."""
    from ray import serve

    from crisis_tool.runtime.serve.deployment import build_app, set_draining

    http_options: dict[str, object] = {"host": serve_options.host, "port": serve_options.port}
    if serve_options.tls_cert is not None:
        http_options.update(ssl_certfile=str(serve_options.tls_cert), ssl_keyfile=str(serve_options.tls_key))
    started_serve = not serve_running()
    serve.start(proxy_location=serve_options.proxy_location, http_options=http_options,
                logging_config={"log_level": "WARNING", "enable_access_log": False},
                controller_options=controller_options(serve_options))
    set_draining(serve_options.app_name, False)  # a restart on the same cluster starts undrained
    serve.run(build_app(predictor_options, serve_options), name=serve_options.app_name, route_prefix="/",
              blocking=False)
    return RunningServer(serve_options.base_url, serve_options.app_name, started_serve)


def controller_options(serve_options: ServeOptions) -> dict[str, object]:
    """The environment of Serve's controller, which its proxies inherit: the request-head deadline
    (`proxy_guard`) and, with one proxy (HeadOnly), no preference for replicas on the proxy's own node (it
    sends every request to the head's replica while that one has a free slot, up to --max-ongoing-requests,
    and the other nodes' replicas would sit idle; a proxy per node, behind a load balancer, keeps it)."""
    env = proxy_env(serve_options.body_timeout_s)
    if serve_options.proxy_location == "HeadOnly":
        env["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    return {"runtime_env": {"env_vars": env}}


def stop_serve() -> None:
    """Stop the Serve this process started, after the drain, without a moment of 404s.

    `serve.shutdown()` (and `serve.delete`) first empties the proxies' route table, and a request arriving
    then gets 404, which clients rightly do not retry. So Serve's actors are ended directly instead: the
    controller first (nothing restarts the others), then the proxies (new connections are refused, which
    clients retry), then the replicas, whose requests finished during the drain.
    """
    import ray
    from ray import serve

    with contextlib.suppress(Exception):  # the drain's handles long-poll the controller: stop them first
        client = serve.context._get_global_client()
        if client is not None:
            client.shutdown_cached_handles()
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "serve"]
    for name in sorted(names, key=lambda n: (not n.startswith("SERVE_CONTROLLER"), not n.startswith("SERVE_PROXY"))):
        try:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        except ValueError:  # already gone
            pass
    serve.context._set_global_client(None)  # this process's handle to the controller it ended


def serve_running() -> bool:
    """True when Serve's controller already runs on the connected Ray cluster."""
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")  # ray.serve._private.constants' names
    except ValueError:
        return False
    return True


def drain(serve_options: ServeOptions) -> None:
    """Make the replicas answer 503 + Retry-After, then wait (at most `drain_s`) for requests in flight."""
    from ray import serve

    from crisis_tool.runtime.serve.deployment import DEPLOYMENT_NAME, DRAIN_POLL_S, set_draining

    set_draining(serve_options.app_name, True)
    deadline = time.monotonic() + serve_options.drain_s
    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=serve_options.app_name)
    time.sleep(2 * DRAIN_POLL_S)  # every replica has read the flag
    try:
        _wait_in_flight(handle, deadline)
    finally:
        with contextlib.suppress(Exception):
            handle.shutdown()  # its router long-polls the controller, which stop_serve ends


def _wait_in_flight(handle: Any, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            stats = handle.stats.remote().result(timeout_s=max(0.1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - no replica answers: nothing left to wait for
            return
        if stats.get("in_flight", 0) <= 0:
            return
        time.sleep(0.1)


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
    check_options(predictor_options, serve_options)
    if not serve_options.address:
        check_port_free(serve_options.host, serve_options.port)
        predictor_options.check()  # a bad bundle, backend or device: one line before Ray starts
    stop = stop or threading.Event()
    with ray_session(serve_options.address):
        from ray import serve

        # after ray.init, which installs its own SIGTERM handler in the driver
        with sigterm_sets(stop):
            server = start_server(predictor_options, serve_options)
            try:
                on_ready(server)
                wait_until_stopped(stop)
            finally:
                drain(serve_options)
                if not serve_options.address or server.started_serve:
                    stop_serve()
                else:  # a Serve that other applications share keeps running (its proxy answers 404 for our routes)
                    serve.delete(server.app_name)
