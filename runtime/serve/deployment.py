"""The Ray Serve deployment: one Predictor per replica, records from all requests batched by `@serve.batch`.

Routes (JSON): `POST /v1/predict` (see `predict_request`), `GET /healthz` (the replica is alive), `GET /readyz`
(the model is loaded and answered its warm-up record), `GET /v1/model` (labels, text source, backend,
precision, provider, decode mode, image size limit, the manifest's sha256). Whole-request problems get a 4xx
`{"error": message}`; a bad record gets its own error in the answer, as in `predict`; a bug of ours gets a 500
for that request only.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from dataclasses import replace
from typing import Any, cast

from PIL import Image
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse

from crisis_tool.runtime.bundle import MANIFEST_NAME
from crisis_tool.runtime.predictor import Prediction
from crisis_tool.runtime.records import Record, RecordError
from crisis_tool.runtime.serve.metrics import ServeMetrics
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions
from crisis_tool.runtime.serve.predict_request import RequestRejected, parse_predict_body
from crisis_tool.runtime.writers import prediction_to_dict

log = logging.getLogger(__name__)
PREDICT, HEALTH, READY, MODEL = "/v1/predict", "/healthz", "/readyz", "/v1/model"
ROUTES = {PREDICT: "POST", HEALTH: "GET", READY: "GET", MODEL: "GET"}
DEPLOYMENT_NAME = "PredictorServer"


def warmup_record() -> Record:
    """A small generated image and a short text: the record each replica answers before it is ready."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 96, 64)).save(buffer, format="PNG")
    return Record("warm-up", "flood waters rising near the bridge", buffer.getvalue())


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestRejected(400, "bad Content-Length header")
        if int(declared) > limit:
            raise RequestRejected(413, f"body of {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class PredictorServer:
    """One replica: a Predictor, its metrics, and the HTTP routes."""

    def __init__(self, predictor_options: PredictorOptions, serve_options: ServeOptions) -> None:
        self.settings = serve_options
        self.predictor = predictor_options.load()
        self.metrics = ServeMetrics()
        batcher = cast(Any, self._predict_batch)  # @serve.batch adds these setters; its typing does not say so
        batcher.set_max_batch_size(serve_options.max_batch)
        batcher.set_batch_wait_timeout_s(serve_options.batch_wait_ms / 1000.0)
        engine = self.predictor.backend
        manifest = predictor_options.bundle / MANIFEST_NAME
        self.model_info = {
            "labels": list(self.predictor.labels),
            "text_source": self.predictor.text_source,
            "backend": engine.name,
            "precision": engine.precision,
            "provider": engine.provider,
            "max_batch": serve_options.max_batch,
            "decode": self.predictor.decode_mode,
            "max_image_bytes": self.predictor.image_limits.max_bytes,
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        }
        self.ready = False
        warm = self.predictor.predict([warmup_record()])[0]
        if warm.error is not None:
            raise RuntimeError(f"the warm-up record failed: {warm.error}")
        self.ready = True

    def check_health(self) -> None:
        """Ray Serve restarts a replica whose health check raises."""
        if not self.ready:
            raise RuntimeError("the model is not ready")

    def stats(self) -> dict[str, float]:
        """This replica's totals: requests, records, record errors, batches, mean batch."""
        return self.metrics.stats.to_dict()

    async def __call__(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        path = request.url.path
        route = path if path in ROUTES else "other"
        try:
            status, payload = await self._route(request, path)
        except RequestRejected as exc:
            status, payload = exc.status, {"error": exc.message}
        except Exception as exc:  # noqa: BLE001 - a bug of ours fails this request, never the replica
            log.exception("request to %s failed", path)
            status, payload = 500, {"error": f"internal error: {type(exc).__name__}"}
        self.metrics.request(route, status, time.perf_counter() - start)
        return JSONResponse(payload, status_code=status)

    async def _route(self, request: Request, path: str) -> tuple[int, Any]:
        if path not in ROUTES:
            return 404, {"error": f"no route {path}; see {', '.join(ROUTES)}"}
        if request.method != ROUTES[path]:
            return 405, {"error": f"{path} takes {ROUTES[path]}, not {request.method}"}
        if path == HEALTH:
            return 200, {"status": "alive"}
        if path == READY:
            return (200, {"status": "ready"}) if self.ready else (503, {"status": "loading"})
        if path == MODEL:
            return 200, self.model_info
        parsed = parse_predict_body(await read_body(request, self.settings.max_body_bytes), self.settings.max_records)
        answers = await asyncio.gather(*(self._answer(item) for item in parsed.items))
        return 200, answers[0] if parsed.single else answers

    async def _answer(self, item: Record | RecordError) -> dict[str, Any]:
        if isinstance(item, RecordError):
            self.metrics.rejected_records(1)
            return prediction_to_dict(Prediction.failed(item.id, item.error))
        return await self._predict_batch(item)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _predict_batch(self, records: list[Record]) -> list[dict[str, Any]]:
        predictions = await asyncio.to_thread(self.predictor.predict, records)
        self.metrics.batch(len(predictions), sum(p.error is not None for p in predictions))
        return [prediction_to_dict(p) for p in predictions]


PredictorDeployment = serve.deployment(name=DEPLOYMENT_NAME)(PredictorServer)


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
            "target_ongoing_requests": serve_options.max_batch,
        }
    else:
        settings["num_replicas"] = serve_options.replicas
    predictor_options = replace(predictor_options, max_batch=serve_options.max_batch)
    return PredictorDeployment.options(**settings).bind(predictor_options, serve_options)
