"""`crisis-tool serve` as a user runs it: one-line usage errors; a real start, SIGTERM drain and stop, and a
restart on the same port that a retrying client rides through."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import RAY_MISSING, b64, free_port, png_bytes

from crisis_tool.cli import run

pytest.importorskip("ray", reason=RAY_MISSING)


def test_usage_errors_are_one_line(tiny_bundle: Path, capfd) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cases = [
            (["--min-replicas", "1"], "--min-replicas and --max-replicas go together"),
            (["--min-replicas", "3", "--max-replicas", "2"], "autoscaling bounds need"),
            (["--batch-size", "32", "--max-ongoing-requests", "8"], "--max-ongoing-requests must be at least"),
            (["--proxy-location", "Nowhere"], "--proxy-location must be one of EveryNode, HeadOnly"),
            (["--port", str(taken)], f"cannot listen on 127.0.0.1:{taken}"),
        ]
        for args, message in cases:
            capfd.readouterr()
            code = run(["serve", "--bundle", str(tiny_bundle), *args])
            err = capfd.readouterr().err
            assert code == 2 and message in err and "Traceback" not in err, (args, err)
            assert len(err.strip().splitlines()) == 1, err


def start_serve(bundle: Path, port: int, log: Any) -> subprocess.Popen:
    """`crisis-tool serve` as a user starts it (its own session, so a failed test can kill all of it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "crisis_tool.cli", "serve", "--bundle", str(bundle), "--port", str(port),
         "--drain-s", "3"], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, seconds: float = 150) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "serve did not become ready"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_clients_retries_succeed_across_a_sigterm_drain_and_restart(tiny_bundle: Path, tmp_path: Path,
                                                                    capsys) -> None:
    """A client posting record after record (serve.client.ServeClient: retries 503 after its Retry-After, and
    refused connections) while the server is stopped with SIGTERM (drain, exit 0) and started again on the same
    port: every request is answered, each answer equals the record predicted alone, and the client did retry."""
    from crisis_tool.runtime.predictor import Predictor
    from crisis_tool.runtime.records import Record
    from crisis_tool.runtime.serve.client import ServeClient
    from crisis_tool.runtime.writers import prediction_to_dict

    port, pool, most = free_port(), 8, 2000
    url = f"http://127.0.0.1:{port}"
    texts = [f"bridge collapsed {i}" for i in range(pool)]
    with Predictor.from_bundle(tiny_bundle, threads=1) as predictor:
        alone = [prediction_to_dict(predictor.predict([Record(f"p{i}", texts[i], png_bytes(i))])[0])
                 for i in range(pool)]
    logs = [tmp_path / "serve1.log", tmp_path / "serve2.log"]
    handles = [logs[0].open("w+"), logs[1].open("w+")]
    procs = [start_serve(tiny_bundle, port, handles[0])]
    client = ServeClient(url, timeout_s=30, retry_for_s=240)
    answers: list[Any] = []
    restarted, finished = threading.Event(), threading.Event()

    def post_until_after_the_restart() -> None:
        after = 0
        while after < 5 and len(answers) < most:  # a few answers from the restarted server, then stop
            i = len(answers)
            after += restarted.is_set()
            answers.append(client.post_json("/v1/predict", {"id": f"r{i}", "text": texts[i % pool],
                                                            "image_b64": b64(png_bytes(i % pool))}))
            time.sleep(0.05)
        finished.set()  # not reached when a request raised (no answer within the retry budget)

    worker = threading.Thread(target=post_until_after_the_restart, daemon=True)
    try:
        wait_ready(url, procs[0], logs[0])
        worker.start()
        deadline = time.monotonic() + 120
        while len(answers) < 3:  # the client is mid-stream when the server stops
            assert worker.is_alive() and time.monotonic() < deadline, answers
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=90) == 0
        first = logs[0].read_text()
        assert f"at http://127.0.0.1:{port}" in first and "Traceback" not in first, first
        for noise in (" INFO ", "Started Serve", "will not be applied", "core_worker"):  # quiet Ray by default
            assert noise not in first, first
        procs.append(start_serve(tiny_bundle, port, handles[1]))
        wait_ready(url, procs[1], logs[1])
        restarted.set()
        worker.join(timeout=300)
        assert finished.is_set() and len(answers) < most, f"{len(answers)} answered"
    finally:
        for proc in procs:
            stop(proc)
        for handle in handles:
            handle.close()
    assert [a.status for a in answers] == [200] * len(answers), [(a.status, a.body) for a in answers
                                                                 if a.status != 200][:3]
    for i, got in enumerate(a.body for a in answers):
        want = alone[i % pool]
        assert (got["id"], got["label"], got["error"]) == (f"r{i}", want["label"], None)
        assert got["probs"] == pytest.approx(want["probs"], abs=1e-5)
    assert client.retries, "no request was retried: the server never refused one"
    with capsys.disabled():
        print(f"\n{len(answers)} requests answered across the restart; retried, by reason: {client.retries}")


def test_every_hardening_option_reaches_the_server(tiny_bundle: Path, tmp_path: Path, monkeypatch, capfd) -> None:
    """The serve command hands each option to ServeOptions (a flag that is parsed and dropped protects nobody),
    and a non-loopback bind without a token warns."""
    import hashlib

    from crisis_tool.runtime.serve import server

    seen = {}
    monkeypatch.setattr(server, "serve_until_stopped", lambda predictor, options, announce: seen.update(o=options))
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-enough-length\n")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    assert run(["serve", "--bundle", str(tiny_bundle), "--body-timeout-s", "3", "--max-uploads-per-client", "5",
                "--max-uploads-total", "50", "--max-image-pixels", "1000000", "--max-request-pixels", "9000000",
                "--token-file", str(token), "--tls-cert", str(cert), "--tls-key", str(key), "--model-name", "crisis",
                "--drain-s", "2", "--proxy-location", "HeadOnly"]) == 0
    o = seen["o"]
    assert (o.body_timeout_s, o.max_uploads_per_client, o.max_uploads_total) == (3, 5, 50)
    assert (o.max_image_pixels, o.max_request_pixels, o.model_name, o.drain_s) == (1_000_000, 9_000_000, "crisis", 2)
    assert o.token_sha256 == hashlib.sha256(b"s3cret-token-of-enough-length").hexdigest()
    assert (o.tls_cert, o.tls_key) == (cert, key) and o.proxy_location == "HeadOnly"
    assert o.bind_warning() is None
    open_bind = type(o)(host="0.0.0.0")
    assert "without --token-file" in (open_bind.bind_warning() or "")


def test_a_restart_is_not_blocked_by_the_stopped_servers_connections() -> None:
    """A connection the server closed stays in TIME_WAIT on its port for a minute: the port check must pass
    (the server binds with SO_REUSEADDR), while a socket still listening there is refused."""
    from crisis_tool.runtime.errors import UsageError
    from crisis_tool.runtime.serve.lifecycle import check_port_free

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
        check_port_free("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    time.sleep(0.1)
    client.close()
    listener.close()
    check_port_free("127.0.0.1", port)


def test_one_proxy_spreads_requests_over_every_nodes_replicas() -> None:
    from crisis_tool.runtime.serve.options import ServeOptions
    from crisis_tool.runtime.serve.server import controller_options

    def env(**options: object) -> dict[str, str]:
        return controller_options(ServeOptions(**options))["runtime_env"]["env_vars"]  # type: ignore[index]

    assert "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING" not in env()
    assert env(proxy_location="HeadOnly")["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] == "0"
    assert env(body_timeout_s=3.0)["CRISIS_SERVE_HEAD_TIMEOUT_S"] == "3"  # the proxies' request-head deadline
