"""`crisis-tool serve` as a user runs it: one-line usage errors, and a real start, answer and SIGTERM stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

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
            (["--port", str(taken)], f"cannot listen on 127.0.0.1:{taken}"),
        ]
        for args, message in cases:
            capfd.readouterr()
            code = run(["serve", "--bundle", str(tiny_bundle), *args])
            err = capfd.readouterr().err
            assert code == 2 and message in err and "Traceback" not in err, (args, err)
            assert len(err.strip().splitlines()) == 1, err


def test_serve_command_answers_then_stops_on_sigterm(tiny_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crisis_tool.cli", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
         "--threads", "1"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 150
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not become ready"
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        body = json.dumps({"id": "1", "text": "bridge collapsed", "image_b64": b64(png_bytes(3))}).encode()
        request = urllib.request.Request(f"{url}/v1/predict", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
        assert answer["id"] == "1" and answer["error"] is None and answer["label"] in answer["probs"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        text = (tmp_path / "serve.log").read_text()
        assert f"at http://127.0.0.1:{port}" in text and "Traceback" not in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


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
                "--drain-s", "2"]) == 0
    o = seen["o"]
    assert (o.body_timeout_s, o.max_uploads_per_client, o.max_uploads_total) == (3, 5, 50)
    assert (o.max_image_pixels, o.max_request_pixels, o.model_name, o.drain_s) == (1_000_000, 9_000_000, "crisis", 2)
    assert o.token_sha256 == hashlib.sha256(b"s3cret-token-of-enough-length").hexdigest()
    assert (o.tls_cert, o.tls_key) == (cert, key)
    assert o.bind_warning() is None
    open_bind = type(o)(host="0.0.0.0")
    assert "without --token-file" in (open_bind.bind_warning() or "")
