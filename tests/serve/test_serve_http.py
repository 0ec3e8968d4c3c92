"""`serve` over HTTP on 127.0.0.1: load from 32 clients, bad requests during the load, a replica killed.

One local Ray and one Serve instance for the module; the fault test redeploys the app with 2 replicas.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import RAY_MISSING, b64, free_port, png_bytes, readme_client

pytest.importorskip("ray", reason=RAY_MISSING)
from ray import serve  # noqa: E402

from crisis_tool.runtime.predictor import Predictor  # noqa: E402
from crisis_tool.runtime.records import Record  # noqa: E402
from crisis_tool.runtime.serve.deployment import DEPLOYMENT_NAME  # noqa: E402
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions  # noqa: E402
from crisis_tool.runtime.serve.server import RunningServer, start_server  # noqa: E402

N_REQUESTS, N_CLIENTS, POOL = 2000, 32, 64
MAX_BODY = 256 * 1024
TEXTS = ["Flooding on Main St #Harvey", "RT @FEMA: shelters open http://t.co/x", "power lines down",
         "donate now", "bridge collapsed after the quake", "all good here"]


def pool_records() -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "text": TEXTS[i % len(TEXTS)], "image_b64": b64(png_bytes(i % 40))} for i in range(POOL)]


@pytest.fixture(scope="module")
def expected(tiny_bundle: Path) -> dict[str, dict[str, Any]]:
    """The Predictor's direct answer for every pool record alone (batch 1; by pool id): what each record must get
    however the server batches it with other requests' records."""
    import base64

    records = [Record(r["id"], r["text"], base64.b64decode(r["image_b64"])) for r in pool_records()]
    with Predictor.from_bundle(tiny_bundle, backend="onnxruntime", batch_size=1) as predictor:
        return {p.id: {"label": p.label, "probs": p.probs, "error": p.error} for p in predictor.predict(records)}


def serve_options(port: int, replicas: int = 1) -> ServeOptions:
    return ServeOptions(port=port, replicas=replicas, batch_size=16, batch_wait_ms=10, max_body_bytes=MAX_BODY,
                        max_records=32, cpus_per_replica=1.0)


@pytest.fixture(scope="module")
def server(local_ray: Any, tiny_bundle: Path) -> RunningServer:
    running = start_server(PredictorOptions(bundle=tiny_bundle, threads=1, backend="onnxruntime"),
                           serve_options(free_port()))
    yield running
    serve.shutdown()


def call(url: str, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} if body is not None else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def replica_stats() -> dict[str, float]:
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name="crisis-tool").stats.remote().result()


@dataclass
class LoadResult:
    answers: dict[int, tuple[int | None, Any]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    bad: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    stats_before: dict[str, float] = field(default_factory=dict)
    stats_after: dict[str, float] = field(default_factory=dict)


def run_clients(n: int, clients: int, send: Callable[[int], Any]) -> tuple[dict[int, Any], list[float]]:
    """`send(i)` for i in range(n) from `clients` threads; returns answers by i and per-request seconds."""
    answers: dict[int, Any] = {}
    latencies: list[float] = []
    counter = iter(range(n))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                answer = send(i)
            except urllib.error.HTTPError as exc:  # its body says which guard answered
                answer = f"HTTP {exc.code}: {exc.read()[:300]!r}"
            except Exception as exc:  # noqa: BLE001 - a failure is an answer the test counts
                answer = exc
            with lock:
                answers[i] = answer
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return answers, latencies


def bad_requests() -> dict[str, bytes]:
    pool = pool_records()
    return {
        "malformed_json": b'{"id": "x", "text": ',
        "garbage_base64": json.dumps({"id": "g", "text": "t", "image_b64": "%%%garbage==="}).encode(),
        "oversize_body": json.dumps({"id": "big", "text": "t", "image_b64": "A" * MAX_BODY}).encode(),
        "missing_id": json.dumps({"text": "t", "image_b64": pool[0]["image_b64"]}).encode(),
        "missing_image": json.dumps({"id": "m", "text": "t"}).encode(),
        "zero_byte_image": json.dumps({"id": "z", "text": "t", "image_b64": ""}).encode(),
        "corrupt_image": json.dumps({"id": "c", "text": "t", "image_b64": b64(b"not an image at all")}).encode(),
    }


@pytest.fixture(scope="module")
def load(server: RunningServer) -> LoadResult:
    """2,000 single-record requests from 32 threads; meanwhile a thread sends every bad request 3 times."""
    pool = pool_records()
    result = LoadResult(stats_before=replica_stats())
    stop = threading.Event()

    def send(i: int) -> tuple[int, Any]:
        record = {**pool[i % POOL], "id": f"q{i}"}
        return call(server.url, "POST", "/v1/predict", json.dumps(record).encode())

    def hostile() -> None:
        for _ in range(3):
            for name, body in bad_requests().items():
                result.bad.setdefault(name, []).append(call(server.url, "POST", "/v1/predict", body))
            if stop.wait(0.2):
                return

    attacker = threading.Thread(target=hostile)
    attacker.start()
    result.answers, result.latencies = run_clients(N_REQUESTS, N_CLIENTS, send)
    stop.set()
    attacker.join(timeout=120)
    result.stats_after = replica_stats()
    return result


def test_routes(server: RunningServer, tiny_bundle: Path, expected: dict) -> None:
    assert call(server.url, "GET", "/healthz") == (200, {"status": "alive"})
    assert call(server.url, "GET", "/readyz") == (200, {"status": "ready"})
    status, model = call(server.url, "GET", "/v1/model")
    assert status == 200
    assert model["labels"] == ["little_or_no_damage", "mild_damage", "severe_damage"]
    assert (model["backend"], model["precision"], model["text_source"]) == ("onnxruntime", "fp32", "tweet")
    assert model["manifest_sha256"] == hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()
    assert call(server.url, "GET", "/v1/nothing")[0] == 404
    assert call(server.url, "GET", "/v1/predict")[0] == 405


def test_list_request_answers_every_record_in_order(server: RunningServer, expected: dict) -> None:
    pool = pool_records()
    body = [pool[3], {"id": "no-image", "text": "t"}, pool[5], {"text": "no id"}, {**pool[7], "text": None}]
    status, answers = call(server.url, "POST", "/v1/predict", json.dumps(body).encode())
    assert status == 200
    assert [a["id"] for a in answers] == ["p3", "no-image", "p5", None, "p7"]
    assert [a["label"] for a in answers[::2][:2]] == [expected["p3"]["label"], expected["p5"]["label"]]
    assert "no image (field 'image_b64')" in answers[1]["error"]
    assert "no usable field 'id'" in answers[3]["error"]
    assert "record p7: empty text (field 'text')" in answers[4]["error"]
    assert all({"id", "label", "confidence", "probs", "tasks", "error"} <= set(a) for a in answers)


def test_load_every_request_answered_as_the_predictor_does(load: LoadResult, expected: dict, capsys) -> None:
    assert len(load.answers) == N_REQUESTS
    failures = {i: a for i, a in load.answers.items() if not isinstance(a, tuple) or a[0] != 200}
    assert not failures, f"{len(failures)} requests failed, e.g. {list(failures.items())[:3]}"
    for i, (_, answer) in load.answers.items():
        want = expected[f"p{i % POOL}"]
        assert answer["id"] == f"q{i}" and answer["error"] is None and answer["label"] == want["label"]
        assert list(answer["probs"]) == list(want["probs"])
        # batch invariance through serve: batched with other requests' records, equal to alone (fp32 bound)
        np.testing.assert_allclose(list(answer["probs"].values()), list(want["probs"].values()), rtol=0, atol=1e-6)
    p50, p99 = np.percentile(np.array(load.latencies) * 1000, [50, 99])
    with capsys.disabled():
        print(f"\nserve load: {N_REQUESTS} requests from {N_CLIENTS} clients, p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def test_load_forms_batches_across_requests(load: LoadResult, capsys) -> None:
    before, after = load.stats_before, load.stats_after
    batches = after["batches"] - before["batches"]
    mean_batch = (after["batched_records"] - before["batched_records"]) / batches
    with capsys.disabled():
        print(f"\nserve load: {batches:.0f} model batches, mean batch {mean_batch:.1f}")
    assert mean_batch > 4


def test_bad_requests_during_load_get_their_error(load: LoadResult, server: RunningServer) -> None:
    want = {
        "malformed_json": (400, "malformed JSON"),
        "garbage_base64": (200, "record g: field 'image_b64' is not valid base64"),
        "oversize_body": (413, f"the limit is {MAX_BODY}"),
        "missing_id": (200, "no usable field 'id'"),
        "missing_image": (200, "record m: no image (field 'image_b64')"),
        "zero_byte_image": (200, "record z: empty image"),
        "corrupt_image": (200, "record c: bad image"),
    }
    assert set(load.bad) == set(want)
    for name, answers in load.bad.items():
        status, message = want[name]
        assert answers, name
        for got_status, body in answers:
            assert got_status == status, (name, body)
            error = body["error"]
            assert message in error, (name, error)
            if status == 200:
                assert body["label"] is None and body["probs"] == {}
    assert call(server.url, "GET", "/readyz")[0] == 200  # nothing a client sent stopped the server


def replica_actor_names() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and f"#{DEPLOYMENT_NAME}#" in a["name"]}


def wait_healthy(replicas: int, seconds: float = 90) -> set[str]:
    """Replica actor names once the app runs `replicas` healthy replicas (bounded wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app = serve.status().applications.get("crisis-tool")
        deployment = app.deployments.get(DEPLOYMENT_NAME) if app else None
        if (app and app.status == "RUNNING" and deployment.status == "HEALTHY"
                and deployment.replica_states.get("RUNNING", 0) == replicas
                and len(names := replica_actor_names()) == replicas):
            return names
        time.sleep(0.5)
    raise AssertionError(f"not healthy with {replicas} replicas after {seconds}s: {serve.status()}")


def test_killed_replica_is_replaced_and_retries_lose_nothing(
    load: LoadResult, server: RunningServer, tiny_bundle: Path, expected: dict, caplog, capsys
) -> None:
    import ray

    port = int(server.url.rsplit(":", 1)[1])
    start_server(PredictorOptions(bundle=tiny_bundle, threads=1), serve_options(port, replicas=2))
    before = wait_healthy(2)
    predict = readme_client()
    url = f"{server.url}/v1/predict"
    pool = pool_records()
    n, killed = 600, threading.Event()

    def send(i: int) -> dict[str, Any]:
        if i == n // 3 and not killed.is_set():
            killed.set()
            ray.kill(ray.get_actor(sorted(before)[0], namespace="serve"), no_restart=True)
        return predict({**pool[i % POOL], "id": f"k{i}"}, url=url, attempts=6)

    with caplog.at_level(logging.WARNING):
        answers, _ = run_clients(n, 16, send)
    retried = Counter(r.getMessage().split(": ", 1)[-1] for r in caplog.records if "retrying" in r.getMessage())
    with capsys.disabled():
        print(f"\nreplica killed after {n // 3} of {n} requests; attempts retried: {dict(retried) or 'none'}")
    assert killed.is_set()
    lost = {i: a for i, a in answers.items() if not isinstance(a, dict)}
    assert len(answers) == n and not lost, f"lost {len(lost)}: {list(lost.items())[:3]}"
    assert all(answers[i]["id"] == f"k{i}" and answers[i]["label"] == expected[f"p{i % POOL}"]["label"]
               for i in range(n))
    after = wait_healthy(2)  # back to 2 healthy replicas, no restart by hand
    assert sorted(before)[0] not in after
    assert call(server.url, "GET", "/readyz")[0] == 200
