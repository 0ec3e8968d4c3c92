"""The HTTP ingress (FastAPI) on a real socket, without Ray: hostile clients, budgets, auth, draining, v2.

The app is `api.build_api` over the same `ServiceCore` a Ray replica holds (`local_server.LocalService`),
served by uvicorn in a thread of this process. Memory is measured in a server process of its own.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import b64, free_port, jpeg_declaring, png_bytes

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from crisis_tool.runtime import predictor as predictor_module  # noqa: E402
from crisis_tool.runtime.serve.api import build_api  # noqa: E402
from crisis_tool.runtime.serve.local_server import LocalService  # noqa: E402
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions  # noqa: E402

BODY_TIMEOUT_S = 3.0
PER_CLIENT = 16
STALLED = 200
TOKEN = "field-token-0123456789abcdef"


@dataclasses.dataclass
class Local:
    service: LocalService
    port: int

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             source: str = "127.0.0.2", timeout: float = 60) -> tuple[int, dict[str, str], Any]:
        """One request from loopback address `source`: (status, headers, decoded JSON body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, source_address=(source, 0))
        try:
            conn.request(method, path, body, headers or {})
            response = conn.getresponse()
            raw = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw or b"null")
        finally:
            conn.close()

    def predict(self, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, dict, Any]:
        return self.call("POST", "/v1/predict", json.dumps(body).encode(),
                         {"Content-Type": "application/json", **(headers or {})}, **kw)


@pytest.fixture(scope="module")
def local(tiny_bundle: Path) -> Iterator[Local]:
    port = free_port()
    options = ServeOptions(port=port, body_timeout_s=BODY_TIMEOUT_S, max_uploads_per_client=PER_CLIENT,
                           max_uploads_total=64, max_records=64, max_body_bytes=4 * 1024 * 1024)
    service = LocalService(PredictorOptions(bundle=tiny_bundle, threads=1), options)
    service.warm_up()
    server = uvicorn.Server(uvicorn.Config(build_api(service), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield Local(service, port)
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def settings(local: Local) -> Iterator[Any]:
    """Change the served options for one test: `settings(token_sha256=...)`; restored afterwards."""
    original = local.service.settings

    def change(**values: Any) -> None:
        local.service.settings = dataclasses.replace(original, **values)

    yield change
    local.service.settings = original
    local.service.draining = False


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every image the Predictor decodes (its one decode entry point)."""
    calls: list[int] = []
    real = predictor_module.decode_and_preprocess

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "decode_and_preprocess", counting)
    return calls


def record(rid: str, image: bytes, text: str = "bridge collapsed after the quake") -> dict[str, Any]:
    return {"id": rid, "text": text, "image_b64": b64(image)}


def test_openapi_docs_list_both_protocols(local: Local) -> None:
    status, _, schema = local.call("GET", "/openapi.json")
    assert status == 200
    assert {"/v1/predict", "/v2/models/{name}/infer", "/v2/health/ready", "/healthz"} <= set(schema["paths"])
    conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=30)
    conn.request("GET", "/docs")
    page = conn.getresponse()
    assert page.status == 200 and b"swagger" in page.read().lower()
    conn.close()


def test_bad_base64_fails_only_its_record_and_duplicates_are_reported(local: Local) -> None:
    good = png_bytes(3)
    status, headers, answers = local.predict([record("a", good), {"id": "b", "text": "t", "image_b64": "%%bad=="},
                                              record("a", png_bytes(4)), record("c", good)])
    assert status == 200 and [a["id"] for a in answers] == ["a", "b", "a", "c"]
    assert [a["error"] is None for a in answers] == [True, False, True, True]
    assert "record b: field 'image_b64' is not valid base64" in answers[1]["error"]
    assert json.loads(headers["x-duplicate-ids"]) == {"a": [1, 3]}
    status, headers, _ = local.predict([record("x", good), record("y", good)])
    assert status == 200 and "x-duplicate-ids" not in headers


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "image/jpeg"])
def test_content_type_is_checked(local: Local, content_type: str) -> None:
    body = json.dumps(record("a", png_bytes(1))).encode()
    status, _, answer = local.call("POST", "/v1/predict", body, {"Content-Type": content_type})
    assert status == 415 and content_type in answer["error"] and "application/json" in answer["error"]
    status, _, _ = local.call("POST", "/v1/predict", body, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200


def test_declared_7900_squared_jpeg_refused_before_decoding(local: Local, decode_calls: list[int]) -> None:
    status, _, answer = local.predict([record("fresh", png_bytes(17), "a fresh image")])
    assert status == 200 and answer[0]["error"] is None and len(decode_calls) == 1  # the counter sees decodes
    bomb = jpeg_declaring(7900, 7900)
    assert len(bomb) < 2000
    status, _, answer = local.predict([record("ok", png_bytes(18)), record("bomb", bomb)])
    assert status == 413
    assert answer["error"] == ("record bomb: image declares 7900x7900 = 62410000 pixels, above the per-image "
                               "budget of 50000000")
    assert len(decode_calls) == 1  # nothing of that request was decoded, not even the good image


def test_a_header_pillow_calls_a_bomb_is_refused_with_its_real_pixel_count(local: Local,
                                                                          decode_calls: list[int]) -> None:
    """30000x30000 is over twice Pillow's own limit: Pillow refuses the header before giving its size, and
    the message once said "2147483648x2147483648" (a stand-in); it now says what the image declares."""
    status, _, answer = local.predict([record("huge", jpeg_declaring(30000, 30000))])
    assert status == 413 and not decode_calls
    assert answer["error"] == ("record huge: image declares 900000000 pixels, above the per-image budget of "
                               "50000000")


def test_request_pixel_budget_counts_all_images(local: Local, settings: Any, decode_calls: list[int]) -> None:
    settings(max_image_pixels=5_000_000, max_request_pixels=12_000_000)
    images = [record(f"r{i}", jpeg_declaring(2000, 2000, seed=i)) for i in range(4)]  # 4 MP each
    status, _, answer = local.predict(images)
    assert status == 413 and answer["error"].startswith("the request's images declare over 12000000 pixels")
    assert "reached at record r3" in answer["error"] and not decode_calls
    status, _, answers = local.predict(images[:3])  # 12 MP: within the budget, so each one is decoded
    assert status == 200 and len(decode_calls) == 3 and [a["id"] for a in answers] == ["r0", "r1", "r2"]


def test_bearer_token(local: Local, settings: Any) -> None:
    settings(token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest())
    body = record("t", png_bytes(2))
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
        status, got, answer = local.predict(body, headers)
        assert status == 401 and got["www-authenticate"] == "Bearer" and "bearer token" in answer["error"]
    assert local.call("GET", "/v2/models/bundle", headers={})[0] == 401
    status, _, answer = local.predict(body, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and answer["error"] is None
    assert local.call("GET", "/healthz")[0] == 200 and local.call("GET", "/v2/health/live")[0] == 200


def test_draining_answers_503_with_retry_after(local: Local, settings: Any) -> None:
    local.service.draining = True
    status, headers, answer = local.predict(record("d", png_bytes(2)))
    assert status == 503 and headers["retry-after"] == "5" and "shutting down" in answer["error"]
    assert local.call("GET", "/readyz")[0] == 503 and local.call("GET", "/v2/health/ready")[0] == 503
    assert local.call("GET", "/healthz")[0] == 200
    local.service.draining = False
    assert local.predict(record("d", png_bytes(2)))[0] == 200


def stalled_upload(port: int) -> socket.socket:
    """A connection from 127.0.0.1 that sends headers and 10 of the 100,000 bytes it declares, then stops."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=("127.0.0.1", 0))
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n[{\"id\": \"s")
    return sock


def read_status(sock: socket.socket) -> int | None:
    try:
        head = sock.recv(64)
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None


def test_stalled_uploads_are_cut_while_another_client_is_served(local: Local) -> None:
    cut_before, refused_before = local.service.guard.cut_total, local.service.guard.refused_total
    stalled = [stalled_upload(local.port) for _ in range(STALLED)]
    try:
        answered = []
        for i in range(20):  # another client (127.0.0.2) during the stall; each request bounded by its timeout
            status, _, answer = local.predict(record(f"n{i}", png_bytes(i % 5)), timeout=30)
            answered.append((status, answer["error"] if isinstance(answer, dict) else answer))
        assert answered == [(200, None)] * 20
        statuses = [read_status(sock) for sock in stalled]  # 408 after the deadline, or 429 at once
    finally:
        for sock in stalled:
            sock.close()
    assert set(statuses) == {408, 429} and statuses.count(408) >= PER_CLIENT, statuses
    cut = local.service.guard.cut_total - cut_before
    refused = local.service.guard.refused_total - refused_before
    assert (cut, refused) == (statuses.count(408), statuses.count(429))
    assert local.service.guard.in_flight == 0


def test_v2_infer_with_tritonclient_equals_v1(local: Local) -> None:
    http_client = pytest.importorskip("tritonclient.http")
    client = http_client.InferenceServerClient(f"127.0.0.1:{local.port}")
    name = local.service.model_name
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    metadata = client.get_model_metadata(name)
    assert [o["name"] for o in metadata["outputs"]] == ["damage_label", "damage_probs", "error"]
    images = [png_bytes(i) for i in range(5)] + [b"not an image"]
    texts = ["flood on main st", "power lines down", "donate now", "all good", "bridge gone", "x"]
    inputs = []
    for tensor, values in (("image", images), ("text", [t.encode() for t in texts]),
                           ("id", [f"v{i}".encode() for i in range(6)])):
        item = http_client.InferInput(tensor, [len(values)], "BYTES")
        item.set_data_from_numpy(np.array(values, dtype=np.object_))
        inputs.append(item)
    result = client.infer(name, inputs)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("damage_label")]
    probs = result.as_numpy("damage_probs")
    errors = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("error")]
    assert probs.dtype == np.float32 and probs.shape == (6, 3)
    _, _, v1 = local.predict([{"id": f"v{i}", "text": t, "image_b64": base64.b64encode(im).decode()}
                              for i, (im, t) in enumerate(zip(images, texts, strict=True))])
    assert labels == [a["label"] or "" for a in v1]
    assert errors == [a["error"] or "" for a in v1] and errors[-1].startswith("record v5: bad image")
    for row, answer in zip(probs[:5], v1[:5], strict=True):
        np.testing.assert_allclose(row, list(answer["tasks"]["damage"]["probs"].values()), rtol=1e-6)


def test_v2_refusals_are_one_line(local: Local) -> None:
    name = local.service.model_name
    cases = [
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["t"]}]}, 400, "missing input"),
        ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 400, "must be BYTES"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["AA=="]},
                     {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["t"]}]}, 400, "has 1 elements"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(png_bytes(1))]},
                     {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["t"]}],
          "outputs": [{"name": "nope"}]}, 400, "unknown output(s) nope"),
    ]
    for body, status, message in cases:
        got, _, answer = local.call("POST", f"/v2/models/{name}/infer", json.dumps(body).encode())
        assert got == status and message in answer["error"] and "\n" not in answer["error"], (body, answer)
    assert local.call("POST", "/v2/models/other/infer", b"{}")[0] == 404


def test_bench_serve_load_rows(local: Local, tiny_bundle: Path) -> None:
    from crisis_tool.runtime.bench.serve_load import generated_records, predict_row, render, serve_row

    records = generated_records(8)
    row = serve_row(f"http://127.0.0.1:{local.port}", records, clients=2, seconds=1.0)
    assert row.posts > 0 and row.errors == 0 and 1.0 <= row.mean_batch <= 2.0 and row.p50_ms <= row.p99_ms
    reference = predict_row(tiny_bundle, records, seconds=0.5, threads=1)
    assert reference.posts >= len(records) and reference.errors == 0
    lines = render([reference, row]).splitlines()
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines)
    assert lines[1].split()[-5] == "1.00" and float(lines[2].split()[-5]) == pytest.approx(
        row.posts_per_s / reference.posts_per_s, abs=0.01)


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from Linux /proc")
def test_rss_back_to_baseline_after_50_bomb_requests(tiny_bundle: Path, tmp_path: Path) -> None:
    """A server process of its own (RLIMIT_AS 6 GiB): 50 requests of 32 JPEGs declaring 7900x7900 each."""
    port = free_port()
    log = (tmp_path / "server.log").open("w+")
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); "
    proc = subprocess.Popen(
        [sys.executable, "-c", limit + "from crisis_tool.runtime.serve.local_server import main; main()",
         "--bundle", str(tiny_bundle), "--port", str(port), "--threads", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    server = Local(None, port)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if server.call("GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        for i in range(5):
            assert server.predict([record(f"w{i}-{k}", png_bytes(i * 8 + k)) for k in range(8)])[0] == 200
        baseline = vm_rss(proc.pid)
        bombs = [record(f"b{k}", jpeg_declaring(7900, 7900, seed=k)) for k in range(32)]
        statuses = {server.predict(bombs, timeout=30)[0] for _ in range(50)}
        after = vm_rss(proc.pid)
        assert statuses == {413}
        assert abs(after - baseline) <= 0.10 * baseline, (baseline, after)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
