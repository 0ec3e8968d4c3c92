"""The HTTP API (FastAPI, OpenAPI at /docs) over a `ServiceCore`: the Ray Serve ingress and the local server.

Routes: `POST /v1/predict` (JSON records, see `predict_request`), `GET /healthz`, `GET /readyz`, `GET /v1/model`,
and the Open Inference Protocol v2 (`v2_protocol`): `GET /v2`, `/v2/health/live`, `/v2/health/ready`,
`/v2/models/{name}`, `/v2/models/{name}/ready`, `POST /v2/models/{name}/infer` (also under
`/versions/1/`). Every error is `{"error": one line}`. In order, a request to a predict route is checked for:
draining (503 + Retry-After), bearer token (401; health routes and /docs stay open), content type (415), the
body (`http_guard`: 400/408/413/429), its records (400/413), the pixel budget (`decode_budget`: 413, before
any decode). Then each record gets its own answer or its own error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crisis_tool.runtime.serve.decode_budget import check_pixel_budget
from crisis_tool.runtime.serve.predict_request import (
    RequestRejected,
    describe_duplicates,
    duplicate_ids,
    parse_predict_body,
)
from crisis_tool.runtime.serve.service import ServiceCore
from crisis_tool.runtime.serve.task_view import task_view
from crisis_tool.runtime.serve.v2_protocol import infer_response, model_metadata, output_specs, parse_infer
from crisis_tool.runtime.writers import prediction_to_dict

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5
OPEN_PATHS = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json")
JSON_TYPES = ("application/json",)
V2_TYPES = ("application/json", "application/octet-stream")
DUPLICATES_HEADER = "X-Duplicate-Ids"
_RECORD_SCHEMA = {"type": "object", "required": ["id", "image_b64"], "properties": {
    "id": {"type": "string"}, "text": {"type": "string", "nullable": True},
    "image_b64": {"type": "string", "description": "the image file, base64"},
    "llava_text": {"type": "string", "nullable": True}}}
_PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [_RECORD_SCHEMA, {"type": "array", "items": _RECORD_SCHEMA}]}}}}}
_V2_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}},
                                                          "application/octet-stream": {"schema": {}}}}}


def error_response(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def bearer_ok(header: str | None, token_sha256: str | None) -> bool:
    """True when no token is configured, or `Authorization: Bearer <token>` matches its sha256."""
    if token_sha256 is None:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    presented = hashlib.sha256(header[len("Bearer "):].strip().encode("utf-8")).hexdigest()
    return hmac.compare_digest(presented, token_sha256)


def check_content_type(request: Request, allowed: tuple[str, ...]) -> None:
    """415 unless the body's Content-Type is one of `allowed` (a missing one is taken as the first)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.split(";", 1)[0].strip().lower()
    if media not in allowed:
        raise RequestRejected(415, f"Content-Type {media!r} is not accepted here; send {' or '.join(allowed)}")


def build_api(service: ServiceCore, observe: Any = None) -> FastAPI:
    """The FastAPI app of one replica (or the local server). `observe(route, status, seconds)` records metrics."""
    app = FastAPI(title="crisis-tool serve", docs_url="/docs", redoc_url=None,
                  description="Crisis tweet classification: `/v1/predict` (JSON) and the Open Inference Protocol v2.")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        path = request.url.path
        service.in_flight += 1
        held = 0
        try:
            if path not in OPEN_PATHS and not bearer_ok(request.headers.get("authorization"),
                                                        service.settings.token_sha256):
                response = error_response(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")
            else:
                if request.method == "POST":  # a body to hold: within the server's budget, or 503 now
                    held = service.held.reserve(request.headers.get("content-length"),
                                                service.settings.max_body_bytes)
                response = await call_next(request)
        except RequestRejected as exc:
            response = error_response(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug of ours fails this request, never the replica
            log.error("request to %s failed", path, exc_info=exc)
            response = error_response(500, f"internal error: {type(exc).__name__}")
        finally:
            service.in_flight -= 1
            service.held.release(held)
        if observe is not None:
            route = request.scope.get("route")
            observe(getattr(route, "path", "other"), response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(RequestRejected)
    async def rejected(request: Request, exc: RequestRejected) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, f"no route {request.url.path}; see /docs")
        if exc.status_code == 405:
            return error_response(405, f"{request.url.path} does not take {request.method}")
        return error_response(exc.status_code, str(exc.detail))

    async def read_records(request: Request, allowed: tuple[str, ...]) -> bytes:
        if service.draining:
            raise RequestRejected(503, "the server is shutting down; retry shortly")
        if not service.ready:
            raise RequestRejected(503, "the model is still loading; retry shortly")
        check_content_type(request, allowed)
        client = request.client.host if request.client else "unknown"
        return await service.guard.read(request.stream(), client, request.headers.get("content-length"),
                                        service.settings.max_body_bytes)

    def check_budget(items: list[Any]) -> None:
        settings = service.settings
        check_pixel_budget(items, settings.max_image_pixels, settings.max_request_pixels)

    @app.get("/healthz", summary="The replica is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="The model is loaded and not draining")
    async def readyz() -> JSONResponse:
        if service.draining:
            return error_response(503, "draining")
        return JSONResponse({"status": "ready"} if service.ready else {"status": "loading"},
                            status_code=200 if service.ready else 503)

    @app.get("/v1/model", summary="Labels, backend, limits and manifest hash")
    async def model() -> dict[str, Any]:
        return service.model_info

    @app.get("/v1/stats", summary="This replica's totals: requests, records, batches, uploads, memory")
    async def stats() -> dict[str, Any]:
        return service.stats()

    @app.post("/v1/predict", summary="Classify one record or a list of records", openapi_extra=_PREDICT_BODY)
    async def predict(request: Request) -> JSONResponse:
        body = await read_records(request, JSON_TYPES)
        parsed = parse_predict_body(body, service.settings.max_records)
        check_budget(parsed.items)
        predictions = await service.predict_records(parsed.items)
        one_head = len(service.heads) == 1
        answers = [prediction_to_dict(p, one_head=one_head) for p in predictions]
        headers = {}
        duplicates = duplicate_ids(getattr(item, "id", None) for item in parsed.items)
        if duplicates:
            log.warning("request with duplicate ids: %s", describe_duplicates(duplicates))
            headers[DUPLICATES_HEADER] = json.dumps(duplicates, ensure_ascii=True)
        return JSONResponse(answers[0] if parsed.single else answers, headers=headers)

    @app.get("/v2", summary="v2 server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": "crisis-tool", "version": "2", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="v2 liveness")
    async def v2_live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready", summary="v2 readiness")
    async def v2_ready() -> JSONResponse:
        ok = service.ready and not service.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    def check_model(name: str, version: str | None = None) -> None:
        if name != service.model_name:
            raise RequestRejected(404, f"no model {name!r}; this server has {service.model_name!r}")
        if version is not None and version != "1":
            raise RequestRejected(404, f"model {name!r} has version 1 only, not {version!r}")

    @app.get("/v2/models/{name}", summary="v2 model metadata")
    @app.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
    async def v2_model(name: str, version: str | None = None) -> dict[str, Any]:
        check_model(name, version)
        return model_metadata(service.model_name, service.heads)

    @app.get("/v2/models/{name}/ready", summary="v2 model readiness")
    @app.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def v2_model_ready(name: str, version: str | None = None) -> JSONResponse:
        check_model(name, version)
        ok = service.ready and not service.draining
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer", summary="v2 inference (BYTES image and text, [N])", openapi_extra=_V2_BODY)
    @app.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def v2_infer(name: str, request: Request, version: str | None = None) -> JSONResponse:
        check_model(name, version)
        body = await read_records(request, V2_TYPES)
        parsed = parse_infer(body, request.headers.get("inference-header-content-length"),
                             service.settings.max_records)
        if parsed.outputs is not None:
            known = {spec["name"] for spec in output_specs(service.heads)}
            unknown = [o for o in parsed.outputs if o not in known]
            if unknown:
                raise RequestRejected(400, f"unknown output(s) {', '.join(unknown)}; the model has "
                                      f"{', '.join(sorted(known))}")
        check_budget(parsed.items)
        predictions = await service.predict_records(parsed.items)
        default_task = service.heads[0].task
        answer = infer_response(service.model_name, parsed, service.heads,
                                [task_view(p, default_task) for p in predictions], [p.error for p in predictions])
        duplicates = duplicate_ids(getattr(item, "id", None) for item in parsed.items)
        if duplicates:
            answer["parameters"] = {"duplicate_ids": describe_duplicates(duplicates)}
        return JSONResponse(answer)

    return app
