"""The review page's web app (Starlette): the queue's posts, their images by queue index, and decisions.

Routes (nothing else is served; no path from the client is ever opened):
    GET  /                              the page (static/index.html)
    GET  /static/{app.js,style.css}     its script and style (package data, no CDN); /favicon.ico: 204
    GET  /api/state                     heads and their labels, reviewer, progress (with the resume position)
    GET  /api/item/{index}              one post: text, per-head prediction, group members, its decisions
    POST /api/decision                  {"index", "task", "label", "group": bool} -> appended, fsynced
    GET  /image/{index}                 the image of queue post `index`
    GET  /image/{index}/member/{k}      the image of that post's k-th group member
With a token, every request needs `Authorization: Bearer T` or the cookie set by opening any page once with
`?token=T`. With `allowed_hosts`, a request naming another Host is refused (DNS rebinding).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from crisis_tool.corrections import Correction
from crisis_tool.review.progress import progress
from crisis_tool.review.queue import QueueItem
from crisis_tool.review.store import CorrectionStore
from crisis_tool.runtime.file_guard import DEFAULT_MAX_IMAGE_BYTES, UnsafeFileError, read_capped

TOKEN_COOKIE = "crisis_review_token"
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}
MAX_BODY_BYTES = 1 << 16


def image_type(data: bytes) -> str | None:
    """The media type of an encoded image from its first bytes (JPEG, PNG, GIF, BMP, WebP), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in IMAGE_TYPES if data.startswith(magic)), None)


def _static(name: str) -> bytes:
    return resources.files("crisis_tool.review").joinpath("static", name).read_bytes()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class ReviewState:
    """The queue, the labels of each head and the corrections store the routes work on."""

    def __init__(self, items: Sequence[QueueItem], store: CorrectionStore,
                 labels_by_task: Mapping[str, Sequence[str]], max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
        self.items = list(items)
        self.store = store
        self.labels = {t: list(v) for t, v in labels_by_task.items()}
        self.max_image_bytes = max_image_bytes

    def item(self, index: int) -> QueueItem | None:
        return self.items[index] if 0 <= index < len(self.items) else None

    def progress(self) -> dict[str, Any]:
        return progress(self.items, self.store.latest, list(self.labels))

    def decisions(self, item: QueueItem) -> dict[str, dict[str, str]]:
        out = {}
        for task in item.heads:
            latest = self.store.latest.get((item.id, task))
            if latest is not None:
                out[task] = {"label": latest.label, "action": latest.action}
        return out

    def item_view(self, item: QueueItem) -> dict[str, Any]:
        return {**item.summary(), "decisions": self.decisions(item)}

    def decide(self, item: QueueItem, task: str, label: str, whole_group: bool) -> list[Correction]:
        """Append the decision (and, for a group, one per member: `via` names this post); returns them."""
        previous = item.heads[task].label
        lines = [self.store.decide(item.id, task, label, previous)]
        if whole_group:
            lines += [self.store.decide(m.id, task, label, m.labels.get(task, previous), via=item.id)
                      for m in item.members]
        self.store.append(lines)
        return lines


def _parse_decision(body: bytes, state: ReviewState) -> tuple[QueueItem, str, str, bool] | JSONResponse:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _error(400, "the body must be a JSON object")
    if not isinstance(data, dict):
        return _error(400, "the body must be a JSON object")
    index, task, label = data.get("index"), data.get("task"), data.get("label")
    item = state.item(index) if isinstance(index, int) and not isinstance(index, bool) else None
    if item is None:
        return _error(404, f"no post at index {index!r}")
    if task not in item.heads:
        return _error(400, f"post {item.id} has no head {task!r}")
    if label not in state.labels[task]:
        return _error(400, f"{label!r} is not a {task} label")
    return item, task, label, bool(data.get("group"))


def _routes(state: ReviewState) -> list[Route]:
    def static_file(name: str) -> Response:
        return Response(_static(name), media_type=STATIC_FILES[name])

    async def page(request: Request) -> Response:
        return static_file("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        return static_file(name) if name in STATIC_FILES and name != "index.html" else _error(404, "not found")

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    async def api_state(request: Request) -> Response:
        return JSONResponse({"labels": state.labels, "tasks": list(state.labels), "reviewer": state.store.reviewer,
                             "corrections": state.store.path.name, "progress": state.progress()})

    async def api_item(request: Request) -> Response:
        item = state.item(request.path_params["index"])
        return JSONResponse(state.item_view(item)) if item else _error(404, "no such post")

    async def api_decision(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "send the decision as application/json")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, "body too large")
        parsed = _parse_decision(body, state)
        if isinstance(parsed, JSONResponse):
            return parsed
        item, task, label, group = parsed
        written = state.decide(item, task, label, group)
        return JSONResponse({"written": len(written), "item": state.item_view(item), "progress": state.progress()})

    def image_response(path: Path | None) -> Response:
        if path is None:
            return _error(404, "this post has no image")
        try:
            data = read_capped(path, state.max_image_bytes)
        except UnsafeFileError:
            return _error(404, "image not available")
        kind = image_type(data)
        return Response(data, media_type=kind) if kind else _error(415, "not an image the page can show")

    async def image(request: Request) -> Response:
        item = state.item(request.path_params["index"])
        return image_response(item.image) if item else _error(404, "no such post")

    async def member_image(request: Request) -> Response:
        item, k = state.item(request.path_params["index"]), request.path_params["k"]
        if item is None or not 0 <= k < len(item.members):
            return _error(404, "no such group member")
        return image_response(item.members[k].image)

    return [
        Route("/", page), Route("/favicon.ico", no_icon), Route("/static/{name:str}", asset),
        Route("/api/state", api_state),
        Route("/api/item/{index:int}", api_item), Route("/api/decision", api_decision, methods=["POST"]),
        Route("/image/{index:int}", image), Route("/image/{index:int}/member/{k:int}", member_image),
    ]


def _host_name(header: str) -> str:
    if header.startswith("["):
        return header[1:].split("]")[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _token_ok(request: Request, token: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE, "")
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def create_app(state: ReviewState, token: str | None = None, allowed_hosts: Collection[str] | None = None) -> Starlette:
    """The review app over `state`; `token` protects every route, `allowed_hosts` limits the Host header."""

    async def guard(request: Request, call_next: Any) -> Response:
        if allowed_hosts is not None and _host_name(request.headers.get("host", "")) not in allowed_hosts:
            return PlainTextResponse("unknown host", status_code=421)
        if token is not None:
            offered = request.query_params.get("token")
            if offered is not None and request.method == "GET":
                if not hmac.compare_digest(offered.encode("utf-8"), token.encode("utf-8")):
                    return PlainTextResponse("wrong token", status_code=401)
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                response: Response = RedirectResponse(target, status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
                return response
            if not _token_ok(request, token):
                return PlainTextResponse("a token is required: open the page once with ?token=...", status_code=401)
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    return Starlette(routes=_routes(state), middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)])
