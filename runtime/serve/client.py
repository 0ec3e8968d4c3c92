"""A small HTTP client of `crisis-tool serve` (standard library only, no Ray): one kept-alive connection, and
bounded retries of what the server may not have answered.

Prediction is idempotent, so a request is sent again when the server answered 503 (draining, or the model
still loading), another 5xx (Ray Serve's proxy when a replica died), 429 (too many uploads from this client)
or 408 (the body did not reach the application in time: a CI run saw it on requests sent just before a Ray
Serve replica was killed), waiting the `Retry-After` it sent (capped) or a short growing pause; when no
server answered at all (connection refused or reset: a restart in progress); and when Ray Serve's proxy
answered 404 in plain text (it listens before the application is deployed, and while Serve starts or stops
has no route: the application's own 404s are JSON and are answers).
Retries stop after `retry_for_s` seconds in all (0: never retry); then the last failure is raised.
Other statuses are answers, returned as they are. `bench --serve` posts through this client (with retries
off, so failures are counted, not hidden); `tests/serve/test_serve_command.py` drives it across a restart.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0  # a larger Retry-After is waited this long at most
FIRST_PAUSE_S = 0.2  # after a connection failure; doubles up to MAX_PAUSE_S
MAX_PAUSE_S = 2.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a server's answer is read up to this size; a larger one is an error


class AnswerTooLarge(Exception):
    """The server sent more than MAX_ANSWER_BYTES (not retried: a server that does it once does it again)."""


class ServerUnavailable(Exception):
    """No answer within the retry budget: the last status (0 for no connection) and its one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"no answer from the server ({reason})")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, headers (lower-case names), the JSON body (None if it is not JSON)."""

    status: int
    headers: dict[str, str]
    body: Any


def retry_after_s(headers: dict[str, str], default: float) -> float:
    """Seconds from a `Retry-After: N` header (capped at MAX_RETRY_AFTER_S); `default` if absent or a date."""
    try:
        return min(max(float(headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return default


@dataclass
class ServeClient:
    """Requests to one server (`http://host:port` or `https://...`) over one connection, reopened as needed.

    Not thread-safe: one client per thread. `retries` counts what was retried, by reason (e.g. "503",
    "connection"), so a caller can report it.
    """

    url: str
    token: str | None = None
    timeout_s: float = 30.0
    retry_for_s: float = 0.0
    sleep: Callable[[float], None] = time.sleep
    retries: dict[str, int] = field(default_factory=dict)
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def post_json(self, path: str, payload: Any) -> Answer:
        return self.request("POST", path, json.dumps(payload).encode("utf-8"))

    def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        """The server's answer; ServerUnavailable when retries (if any) did not get one in time."""
        start, waited = time.monotonic(), 0.0
        pause = FIRST_PAUSE_S
        while True:
            try:
                answer = self._send_once(method, path, body)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                status, reason, wait = 0, f"{type(exc).__name__}: {exc}", pause
                pause = min(2 * pause, MAX_PAUSE_S)
            else:
                no_route_yet = answer.status == 404 and answer.body is None  # not our app's JSON 404
                if answer.status not in RETRY_STATUSES and not no_route_yet:
                    return answer
                status, wait = answer.status, retry_after_s(answer.headers, pause)
                if "retry-after" not in answer.headers:
                    pause = min(2 * pause, MAX_PAUSE_S)
                reason = f"HTTP {status}"
            if max(time.monotonic() - start, waited) + wait > self.retry_for_s:
                if status:
                    return answer  # the server's own refusal, as it is
                raise ServerUnavailable(status, reason)
            key = str(status) if status else "connection"
            self.retries[key] = self.retries.get(key, 0) + 1
            self.sleep(wait)
            waited += wait

    def _send_once(self, method: str, path: str, body: bytes | None) -> Answer:
        """One exchange; a kept-alive connection the server closed meanwhile is reopened once, silently."""
        reused = self._conn is not None
        try:
            return self._send(method, path, body)
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            self.close()
            if not reused:
                raise
        return self._send(method, path, body)

    def _send(self, method: str, path: str, body: bytes | None) -> Answer:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        raw = response.read(MAX_ANSWER_BYTES + 1)  # bounded: whatever the server says its length is
        if len(raw) > MAX_ANSWER_BYTES:
            self.close()
            raise AnswerTooLarge(f"the server's answer to {method} {path} is larger than {MAX_ANSWER_BYTES} bytes")
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Answer(response.status, answer_headers, parsed)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            parts = urlsplit(self.url)
            if parts.scheme == "https":
                self._conn = http.client.HTTPSConnection(parts.hostname or "127.0.0.1", parts.port or 443,
                                                         timeout=self.timeout_s, context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                                        timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
