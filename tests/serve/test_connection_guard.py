"""`serve --no-ray` under connections that never complete a request head (silent, or a few header bytes
then a stall): they are closed after the deadline and, beyond a bound, oldest first, so a normal client is
served while they pile up; in a server process whose descriptors are limited (RLIMIT_NOFILE 512)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_helpers import closed_by_peer, free_port, hold_stalled_connections, png_bytes

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from crisis_tool.runtime.serve.connection_guard import (  # noqa: E402
    DESCRIPTORS_KEPT,
    MOST_WAITING,
    WaitingConnections,
    most_waiting,
)

NOFILE = 512  # the server's descriptor limit: without the guard, about 500 silent connections lock it
DEADLINE_S = 3.0


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_waiting_connections_close_the_oldest_beyond_the_bound_and_at_the_deadline() -> None:
    async def scenario() -> tuple[list[bool], list[bool], int]:
        waiting = WaitingConnections(timeout_s=0.2, most=3)
        transports = [FakeTransport() for _ in range(5)]
        for key, transport in enumerate(transports[:3]):
            waiting.waiting(key, transport)  # type: ignore[arg-type]
        waiting.busy(1)  # its head arrived: not closed by either rule
        waiting.waiting(3, transports[3])  # type: ignore[arg-type]
        waiting.waiting(4, transports[4])  # type: ignore[arg-type]  # 3 wait (0, 2, 3): 0 is closed
        early = [t.closed for t in transports]
        await asyncio.sleep(0.4)
        return early, [t.closed for t in transports], waiting.closed_total

    early, late, closed = asyncio.run(scenario())
    assert early == [True, False, False, False, False]
    assert late == [True, False, True, True, True] and closed == 4


def test_most_waiting_leaves_descriptors_to_the_rest() -> None:
    assert most_waiting(NOFILE) == (NOFILE - DESCRIPTORS_KEPT) // 2
    assert most_waiting(1 << 20) == MOST_WAITING and most_waiting(resource.RLIM_INFINITY) == MOST_WAITING
    assert most_waiting(100) == 8


def _predict(port: int, ident: str) -> tuple[int, float]:
    body = json.dumps({"id": ident, "text": "bridge down", "image_b64": base64.b64encode(png_bytes(3)).decode()})
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert answer["id"] == ident and answer["error"] is None, answer
        return response.status, time.monotonic() - start
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_NOFILE"), reason="needs RLIMIT_NOFILE")
def test_silent_and_stalled_heads_never_lock_out_a_normal_client(tiny_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "server.log").open("w+")
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
    proc = subprocess.Popen(
        [sys.executable, "-c", limit + "from crisis_tool.runtime.serve.local_server import main; main()",
         "--bundle", str(tiny_bundle), "--port", str(port), "--threads", "1", "--body-timeout-s", str(DEADLINE_S)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                _predict(port, "ready")
                break
            except OSError:
                time.sleep(0.5)
        seconds = []
        for wave in range(8):  # 800 connections, more than the server has descriptors
            held += hold_stalled_connections(port, 100)
            status, took = _predict(port, f"n{wave}")
            assert status == 200
            seconds.append(took)
        assert max(seconds) < 2.0, seconds
        time.sleep(DEADLINE_S + 1.0)
        still_open = [s for s in held if not closed_by_peer(s)]
        assert not still_open, f"{len(still_open)} of {len(held)} stalled connections still open after the deadline"
        stats = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stats.request("GET", "/v1/stats")
        totals = json.loads(stats.getresponse().read())
        assert totals["connections_closed"] >= len(held) and totals["connections_waiting"] <= 1, totals
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_proxy_guard_install_makes_the_guarded_protocol_uvicorns_default(monkeypatch, caplog) -> None:
    """What a Ray Serve proxy runs at start (`proxy_env` names it): uvicorn's "auto" protocol becomes the
    guarded one with the deadline from the environment; without it, the proxy starts unguarded, logged."""
    import uvicorn.config
    from uvicorn.importer import import_from_string

    from crisis_tool.runtime.serve import proxy_guard

    monkeypatch.setattr(uvicorn.config, "HTTP_PROTOCOLS", dict(uvicorn.config.HTTP_PROTOCOLS))
    monkeypatch.setattr(proxy_guard, "GuardedProtocol", None)
    monkeypatch.setattr(proxy_guard, "waiting", None)
    env = proxy_guard.proxy_env(2.5)
    assert env[proxy_guard.CALLBACK_VARIABLE] == "crisis_tool.runtime.serve.proxy_guard.install"
    monkeypatch.delenv(proxy_guard.TIMEOUT_VARIABLE, raising=False)
    before = dict(uvicorn.config.HTTP_PROTOCOLS)
    assert proxy_guard.install() == [] and uvicorn.config.HTTP_PROTOCOLS == before
    assert "no request-head deadline" in caplog.text
    monkeypatch.setenv(proxy_guard.TIMEOUT_VARIABLE, env[proxy_guard.TIMEOUT_VARIABLE])
    assert proxy_guard.install() == []
    protocol = import_from_string(uvicorn.config.HTTP_PROTOCOLS["auto"])
    assert protocol is proxy_guard.GuardedProtocol and proxy_guard.waiting is not None
    assert proxy_guard.waiting.timeout_s == 2.5
