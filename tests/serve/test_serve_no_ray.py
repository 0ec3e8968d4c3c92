"""`crisis-tool serve --no-ray`: the single-process server (FastAPI on uvicorn, no Ray).

As a user runs it (a subprocess in which importing Ray fails): answers equal to `predict` record by record,
records of concurrent requests batched together, SIGTERM exits 0. In this process (a gated model): the drain
answers 503 + Retry-After while a request is in flight, that request still gets its answers, then the port
closes. Ray-only options are one usage line.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import b64, free_port, png_bytes

from crisis_tool.cli import run

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CLIENTS, POSTS_EACH = 8, 6
WITHOUT_RAY = """
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("this test forbids importing ray")
sys.meta_path.insert(0, NoRay())
from crisis_tool.cli import run
sys.exit(run(sys.argv[1:]))
"""


def post(port: int, body: Any, timeout: float = 60) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/predict", json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        conn.close()


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def record(i: int) -> dict[str, str]:
    return {"id": f"r{i}", "text": f"bridge collapsed near exit {i}", "image_b64": b64(png_bytes(i))}


def test_ray_only_options_are_one_usage_line(tiny_bundle: Path, capfd) -> None:
    for args, names in [(["--replicas", "2"], "--replicas"), (["--address", "auto"], "--address"),
                        (["--min-replicas", "1", "--max-replicas", "2"], "--min-replicas, --max-replicas"),
                        (["--proxy-location", "HeadOnly"], "--proxy-location")]:
        capfd.readouterr()
        code = run(["serve", "--bundle", str(tiny_bundle), "--no-ray", *args])
        err = capfd.readouterr().err
        assert code == 2 and f"--no-ray serves from one process: {names} need(s) Ray" in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_serves_without_ray_equal_to_predict_and_batched_across_requests(tiny_bundle: Path,
                                                                         tmp_path: Path) -> None:
    from crisis_tool.runtime.predictor import Predictor
    from crisis_tool.runtime.records import Record
    from crisis_tool.runtime.writers import prediction_to_dict

    total = CLIENTS * POSTS_EACH
    with Predictor.from_bundle(tiny_bundle, threads=1) as predictor:
        alone = [prediction_to_dict(predictor.predict([Record(f"r{i}", record(i)["text"], png_bytes(i))])[0])
                 for i in range(total)]
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", WITHOUT_RAY, "serve", "--no-ray", "--bundle", str(tiny_bundle), "--port",
             str(port), "--threads", "1", "--batch-wait-ms", "20"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "not ready"
                try:
                    if get(port, "/readyz")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.2)
            answers: dict[int, Any] = {}
            start = threading.Barrier(CLIENTS)

            def client(k: int) -> None:
                start.wait()
                for j in range(POSTS_EACH):
                    i = k * POSTS_EACH + j
                    answers[i] = post(port, record(i))

            threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            stats = get(port, "/v1/stats")[1]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    text = log_path.read_text()
    assert f"at http://127.0.0.1:{port} (one process, no Ray" in text and "Traceback" not in text, text
    assert sorted(answers) == list(range(total))
    for i, (status, _, body) in answers.items():
        assert status == 200 and (body["id"], body["label"], body["error"]) == (f"r{i}", alone[i]["label"], None)
        assert body["probs"] == pytest.approx(alone[i]["probs"], abs=1e-5)
    assert stats["batched_records"] == total and stats["mean_batch"] > 1.0, stats  # batched across requests


@pytest.fixture
def gated(tiny_bundle: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, threading.Event, threading.Event,
                                                                             threading.Thread]]:
    """serve_local in a thread of this process, its model held until `gate` is set: (port, gate, stop, thread).
    A test's `@pytest.mark.serve_options(...)` adds ServeOptions."""
    from crisis_tool.runtime.serve.local_server import RunningLocal, serve_local
    from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions

    port, gate, stop, ready = free_port(), threading.Event(), threading.Event(), threading.Event()
    marker = request.node.get_closest_marker("serve_options")
    extra = marker.kwargs if marker else {}

    def on_ready(server: RunningLocal) -> None:
        real = server.service.predictor.predict

        def held(records: Any) -> Any:
            assert gate.wait(60), "the test never opened the gate"
            return real(records)

        server.service.predictor.predict = held  # type: ignore[method-assign]
        ready.set()

    thread = threading.Thread(target=serve_local, args=(PredictorOptions(bundle=tiny_bundle, threads=1),
                                                        ServeOptions(port=port, drain_s=30, **extra), on_ready,
                                                        stop))
    thread.start()
    assert ready.wait(120), "serve_local did not start"
    yield port, gate, stop, thread
    gate.set()
    stop.set()
    thread.join(timeout=60)


def test_drain_answers_503_while_a_request_finishes_then_closes(gated) -> None:
    port, gate, stop, thread = gated
    first: list[Any] = []
    worker = threading.Thread(target=lambda: first.append(post(port, [record(0), record(1)])))
    worker.start()
    deadline = time.monotonic() + 30
    while get(port, "/v1/stats")[1]["in_flight"] < 2:  # the stats request itself and the held one
        assert time.monotonic() < deadline, "the request never reached the model"
        time.sleep(0.05)
    stop.set()
    while get(port, "/readyz")[0] != 503:
        assert time.monotonic() < deadline, "the server never started draining"
        time.sleep(0.05)
    status, headers, body = post(port, record(2))
    assert status == 503 and "retry-after" in headers and "shutting down" in body["error"], (status, body)
    assert thread.is_alive(), "the server stopped before its request in flight finished"
    gate.set()
    worker.join(timeout=30)
    status, _, answers = first[0]
    assert status == 200 and [a["id"] for a in answers] == ["r0", "r1"] and all(a["error"] is None
                                                                                   for a in answers)
    thread.join(timeout=30)
    assert not thread.is_alive()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


@pytest.mark.serve_options(max_body_bytes=1 << 20, max_held_bytes=2 << 20)
def test_bodies_held_at_once_stay_within_the_budget(gated) -> None:
    """Two 800 KB requests wait for the (held) model: a third would hold 2.4 MB of a 2 MiB budget and gets
    503 + Retry-After before its body is read; once the two are answered, it is admitted."""
    port, gate, _, _ = gated

    def big(i: int) -> dict[str, str]:
        return {**record(i), "text": "flood " * 135_000}  # about 800 KB of JSON

    waiting: list[Any] = []
    workers = [threading.Thread(target=lambda i=i: waiting.append(post(port, big(i)))) for i in range(2)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 30
    while get(port, "/v1/stats")[1]["held_bytes"] < 1_600_000:
        assert time.monotonic() < deadline, "the two requests were never held"
        time.sleep(0.05)
    status, headers, body = post(port, big(2))
    assert status == 503 and headers["retry-after"] == "5", (status, body)
    assert body["error"] == "the server holds 1.5 MiB of requests, its limit is 2.0 MiB; retry shortly", body
    gate.set()
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(status for status, _, _ in waiting) == [200, 200]
    status, _, answer = post(port, big(2))
    assert status == 200 and answer["id"] == "r2" and answer["error"] is None
    totals = get(port, "/v1/stats")[1]
    assert totals["held_bytes"] == 0 and totals["held_refused"] == 1
