"""The Ray Serve deployment: FastAPI (`api.build_api`) as the ingress, one Predictor per replica, records from
all requests gathered into model batches by `batcher.RecordBatcher` (formed when the model is free, unlike
`@serve.batch`, which cuts records arriving a few milliseconds apart into many small batches).

Draining: the driver sets a flag in Ray's key-value store (`set_draining`); every replica polls it and then
answers 503 with Retry-After instead of taking new work, while the requests in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve import Application

from crisis_tool.runtime.serve.api import build_api
from crisis_tool.runtime.serve.batched_service import BatchedService
from crisis_tool.runtime.serve.metrics import ServeMetrics
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions
from crisis_tool.runtime.serve.service import warmup_record

log = logging.getLogger(__name__)
DEPLOYMENT_NAME = "PredictorServer"
DRAIN_NAMESPACE = "crisis-tool"
DRAIN_POLL_S = 0.25
__all__ = ["DEPLOYMENT_NAME", "PredictorServer", "build_app", "set_draining", "warmup_record"]


def drain_key(app_name: str) -> bytes:
    return f"drain:{app_name}".encode()


def set_draining(app_name: str, draining: bool) -> None:
    """Tell every replica of `app_name` to drain (or not) through Ray's key-value store (driver side)."""
    from ray.experimental import internal_kv

    if draining:
        internal_kv._internal_kv_put(drain_key(app_name), b"1", overwrite=True, namespace=DRAIN_NAMESPACE)
    else:
        internal_kv._internal_kv_del(drain_key(app_name), namespace=DRAIN_NAMESPACE)


class PredictorServer(BatchedService):
    """One replica: a BatchedService with Ray's metrics, the drain flag, health checks, and its FastAPI app."""

    def __init__(self, predictor_options: PredictorOptions, serve_options: ServeOptions) -> None:
        super().__init__(predictor_options, serve_options, ServeMetrics())
        self.model_info["node_id"] = replica_node_id()  # which Ray node answers: for operators and tests
        self.warm_up()
        self._drain_watch: asyncio.Task | None = None

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self, observe=self.metrics.request)

    async def check_health(self) -> None:
        """Ray Serve restarts a replica whose health check raises; the first call starts the drain watch."""
        if not self.ready:
            raise RuntimeError("the model is not ready")
        if self._drain_watch is None:  # runs on the replica's event loop: watch the drain flag from there
            self._drain_watch = asyncio.get_running_loop().create_task(self._watch_drain())

    async def _watch_drain(self) -> None:
        from ray.experimental import internal_kv

        key = drain_key(self.settings.app_name)
        while True:
            value = await asyncio.to_thread(internal_kv._internal_kv_get, key, namespace=DRAIN_NAMESPACE)
            self.draining = value == b"1"
            await asyncio.sleep(DRAIN_POLL_S)

    def stats(self) -> dict[str, Any]:
        """This replica's totals (requests, records, record errors, batches, mean batch, uploads, memory) and
        the Ray node it runs on."""
        return {**super().stats(), "node_id": self.model_info["node_id"]}


def replica_node_id() -> str | None:
    """The Ray node id this replica runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


PredictorDeployment = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress()(PredictorServer))


def build_app(predictor_options: PredictorOptions, serve_options: ServeOptions) -> Application:
    """The deployment bound to its options: replicas (or autoscaling bounds), CPUs and GPUs per replica."""
    settings: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": serve_options.cpus_per_replica,
                              "num_gpus": serve_options.gpus_per_replica},
        "max_ongoing_requests": serve_options.max_ongoing_requests,
        "health_check_period_s": 2.0,
    }
    if serve_options.min_replicas is not None:
        settings["autoscaling_config"] = {
            "min_replicas": serve_options.min_replicas,
            "max_replicas": serve_options.max_replicas,
            "target_ongoing_requests": serve_options.batch_size,
        }
    else:
        settings["num_replicas"] = serve_options.replicas
    predictor_options = replace(predictor_options, batch_size=serve_options.batch_size)
    return PredictorDeployment.options(**settings).bind(predictor_options, serve_options)
