"""The hardened ingress behind Ray Serve's proxy (one local Ray, one replica): stalled uploads, the pixel budget
and memory measured in the replica, draining, and `tritonclient` on the v2 routes."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import (
    RAY_MISSING,
    b64,
    closed_by_peer,
    free_port,
    hold_stalled_connections,
    jpeg_declaring,
    png_bytes,
)

pytest.importorskip("ray", reason=RAY_MISSING)
from ray import serve  # noqa: E402

from crisis_tool.runtime.serve.deployment import DEPLOYMENT_NAME, set_draining  # noqa: E402
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions  # noqa: E402
from crisis_tool.runtime.serve.server import RunningServer, start_server  # noqa: E402

PER_CLIENT, STALLED = 16, 200


@pytest.fixture(scope="module")
def server(local_ray: Any, tiny_bundle: Path) -> RunningServer:
    options = ServeOptions(port=free_port(), body_timeout_s=3.0, max_uploads_per_client=PER_CLIENT,
                           max_records=64, model_name="crisis")
    running = start_server(PredictorOptions(bundle=tiny_bundle, threads=1), options)
    deadline = time.monotonic() + 120
    while call(running, "GET", "/readyz", timeout=10)[0] != 200:
        assert time.monotonic() < deadline, "the replica did not become ready"
        time.sleep(0.5)
    yield running
    serve.shutdown()


def call(server: RunningServer, method: str, path: str, body: bytes | None = None, source: str = "127.0.0.2",
         timeout: float = 60) -> tuple[int, dict[str, str], Any]:
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} if body is not None else {})
        response = conn.getresponse()
        raw = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw or b"null")
    except OSError:
        return 0, {}, None
    finally:
        conn.close()


def predict(server: RunningServer, records: list[dict[str, Any]], timeout: float = 60) -> tuple[int, dict, Any]:
    return call(server, "POST", "/v1/predict", json.dumps(records).encode(), timeout=timeout)


def stats() -> dict[str, float]:
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name="crisis-tool").stats.remote().result()


def test_stalled_uploads_do_not_stop_another_client(server: RunningServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    stalled = []
    try:
        for _ in range(STALLED):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=("127.0.0.1", 0))
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n[{\"id\": \"s")
            stalled.append(sock)
        answers = [predict(server, [{"id": f"n{i}", "text": "roads flooded", "image_b64": b64(png_bytes(i % 5))}],
                           timeout=30) for i in range(20)]
        assert [(status, body[0]["error"]) for status, _, body in answers] == [(200, None)] * 20
        statuses = []
        for sock in stalled:
            head = sock.recv(64)
            statuses.append(int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None)
    finally:
        for sock in stalled:
            sock.close()
    assert set(statuses) == {408, 429} and statuses.count(408) >= PER_CLIENT, statuses
    totals = stats()
    assert totals["uploads_cut"] + totals["uploads_refused"] >= STALLED and totals["uploads_in_flight"] == 0


def test_silent_and_stalled_heads_are_closed_by_the_proxy(server: RunningServer) -> None:
    """Ray Serve's own proxy never closes a connection that does not complete a request head;
    `proxy_guard` makes it close them after --body-timeout-s (3 s here), serving others meanwhile."""
    held = hold_stalled_connections(int(server.url.rsplit(":", 1)[1]), 300)
    try:
        status, _, body = predict(server, [{"id": "h", "text": "roads flooded", "image_b64": b64(png_bytes(1))}],
                                  timeout=30)
        assert (status, body[0]["error"]) == (200, None)
        time.sleep(3.0 + 1.5)
        still_open = sum(not closed_by_peer(sock) for sock in held)
        assert still_open == 0, f"{still_open} of {len(held)} stalled connections still open after the deadline"
    finally:
        for sock in held:
            sock.close()


def test_bombs_refused_and_replica_memory_stays(server: RunningServer) -> None:
    for i in range(3):
        assert predict(server, [{"id": f"w{i}", "text": "t", "image_b64": b64(png_bytes(30 + i))}])[0] == 200
    baseline = stats()["rss_bytes"]
    bombs = [{"id": f"b{k}", "text": "t", "image_b64": b64(jpeg_declaring(7900, 7900, seed=k))} for k in range(32)]
    answers = [predict(server, bombs, timeout=30) for _ in range(50)]
    assert {status for status, _, _ in answers} == {413}
    assert answers[0][2]["error"].startswith("record b0: image declares 7900x7900 = 62410000 pixels")
    after = stats()["rss_bytes"]
    assert baseline > 0 and abs(after - baseline) <= 0.10 * baseline, (baseline, after)


def test_draining_answers_503_then_serves_again(server: RunningServer) -> None:
    body = [{"id": "d", "text": "t", "image_b64": b64(png_bytes(2))}]
    set_draining(server.app_name, True)
    try:
        deadline = time.monotonic() + 30
        while (answer := predict(server, body))[0] != 503:
            assert time.monotonic() < deadline and answer[0] == 200, answer
            time.sleep(0.2)
        assert answer[1]["retry-after"] == "5" and "shutting down" in answer[2]["error"]
        assert call(server, "GET", "/v2/health/ready")[0] == 503
    finally:
        set_draining(server.app_name, False)
    deadline = time.monotonic() + 30
    while (answer := predict(server, body))[0] != 200:
        assert time.monotonic() < deadline and answer[0] == 503, answer
        time.sleep(0.2)


def test_tritonclient_through_ray_equals_v1(server: RunningServer) -> None:
    http_client = pytest.importorskip("tritonclient.http")
    client = http_client.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("crisis")
    images = [png_bytes(i) for i in range(4)]
    texts = [b"flood", b"fire downtown", b"", b"quake"]
    inputs = []
    for name, values in (("image", images), ("text", texts)):
        item = http_client.InferInput(name, [4], "BYTES")
        item.set_data_from_numpy(np.array(values, dtype=np.object_))
        inputs.append(item)
    result = client.infer("crisis", inputs)
    _, _, v1 = predict(server, [{"id": str(i), "text": t.decode(), "image_b64": b64(im)}
                                for i, (im, t) in enumerate(zip(images, texts, strict=True))])
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("damage_label")]
    assert labels == [a["label"] or "" for a in v1] and v1[2]["error"] == "record 2: empty text (field 'text')"
    np.testing.assert_allclose(result.as_numpy("damage_probs")[[0, 1, 3]],
                               [list(v1[i]["probs"].values()) for i in (0, 1, 3)], rtol=1e-6)
