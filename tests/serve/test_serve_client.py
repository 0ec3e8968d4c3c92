"""`serve.client.ServeClient` against a scripted local HTTP server (no Ray): it waits what Retry-After says,
retries refused connections, stops retrying at its budget, and never retries a real answer."""

from __future__ import annotations

import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from serve_helpers import free_port, readme_client

from crisis_tool.runtime.serve.client import MAX_RETRY_AFTER_S, ServeClient, ServerUnavailable, retry_after_s


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs with the statuses in `script` (then 200), with `Retry-After: 3` on 503."""

    script: list[int] = []
    seen = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen += 1
        status = type(self).script.pop(0) if type(self).script else 200
        body = json.dumps({"error": "draining"} if status != 200 else {"ok": True}).encode()
        if status == 4040:  # Ray Serve's proxy before the application is deployed: plain text, not JSON
            status, body = 404, b"Path '/v1/predict' not found. Ping http://127.0.0.1/-/routes for routes."
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "3")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    Scripted.script, Scripted.seen = [], 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_503_is_retried_after_its_retry_after(server: str) -> None:
    Scripted.script = [503, 503]
    waits: list[float] = []
    client = ServeClient(server, retry_for_s=60, sleep=waits.append)
    answer = client.post_json("/v1/predict", {"id": "1"})
    assert (answer.status, answer.body, Scripted.seen) == (200, {"ok": True}, 3)
    assert waits == [3.0, 3.0] and client.retries == {"503": 2}


def test_retries_stop_at_the_budget_and_other_statuses_are_answers(server: str) -> None:
    Scripted.script = [503, 503, 503]
    client = ServeClient(server, retry_for_s=4, sleep=lambda s: None)
    answer = client.post_json("/v1/predict", {})
    assert answer.status == 503 and Scripted.seen == 2  # a second wait of 3 s would pass the 4 s budget
    Scripted.script, Scripted.seen = [400], 0
    assert client.post_json("/v1/predict", {}).status == 400 and Scripted.seen == 1  # never retried
    Scripted.script, Scripted.seen = [503], 0
    assert ServeClient(server).post_json("/v1/predict", {}).status == 503 and Scripted.seen == 1  # budget 0


def test_the_proxys_plain_404_is_retried_and_the_apps_json_404_is_an_answer(server: str) -> None:
    """Ray Serve's proxy listens before the application is deployed (a restart): its plain-text 404 is retried
    (a CI run lost one request to it); a 404 from the application itself (JSON) is an answer."""
    Scripted.script = [4040, 4040]
    waits: list[float] = []
    client = ServeClient(server, retry_for_s=60, sleep=waits.append)
    assert client.post_json("/v1/predict", {}).status == 200 and Scripted.seen == 3
    assert waits == [0.2, 0.4] and client.retries == {"404": 2}
    Scripted.script, Scripted.seen = [404], 0
    answer = client.post_json("/v1/predict", {})
    assert (answer.status, answer.body, Scripted.seen) == (404, {"error": "draining"}, 1)


def test_408_and_5xx_are_retried_with_a_growing_pause(server: str) -> None:
    """A CI run lost 4 requests, sent just before a Ray Serve replica was killed, to 408 (their bodies never
    reached a replica within the body timeout). 408 and 5xx are retried, with a growing pause."""
    Scripted.script = [408, 500, 502, 504]
    waits: list[float] = []
    client = ServeClient(server, retry_for_s=60, sleep=waits.append)
    assert client.post_json("/v1/predict", {}).status == 200 and Scripted.seen == 5
    assert waits == [0.2, 0.4, 0.8, 1.6] and client.retries == {"408": 1, "500": 1, "502": 1, "504": 1}


def test_the_readme_client_retries_408_429_and_5xx_but_not_400(server: str, monkeypatch) -> None:
    import time

    predict = readme_client()
    monkeypatch.setattr(time, "sleep", lambda s: None)
    Scripted.script = [408, 429, 500]
    assert predict({}, url=f"{server}/v1/predict") == {"ok": True} and Scripted.seen == 4
    Scripted.script, Scripted.seen = [400], 0
    with pytest.raises(urllib.error.HTTPError, match="400"):
        predict({}, url=f"{server}/v1/predict")
    assert Scripted.seen == 1


def test_refused_connections_are_retried_then_reported() -> None:
    waits: list[float] = []
    client = ServeClient(f"http://127.0.0.1:{free_port()}", retry_for_s=3.5, sleep=waits.append)
    with pytest.raises(ServerUnavailable) as caught:
        client.request("GET", "/readyz")
    assert caught.value.status == 0 and "ConnectionRefusedError" in caught.value.reason
    assert waits == [0.2, 0.4, 0.8, 1.6] and client.retries == {"connection": 4}  # backoff, within 3.5 s


def test_retry_after_header() -> None:
    assert retry_after_s({"retry-after": "5"}, 1.0) == 5.0
    assert retry_after_s({"retry-after": "100000"}, 1.0) == MAX_RETRY_AFTER_S
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1.5) == 1.5
    assert retry_after_s({}, 0.7) == 0.7


ENDLESS_ANSWER = r'''
import resource, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from crisis_tool.runtime.serve.client import AnswerTooLarge, ServeClient

class Endless(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))  # says 1 TB, and keeps sending
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"x" * 65536)
        except OSError:
            pass
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
threading.Thread(target=server.serve_forever, daemon=True).start()
with open("/proc/self/statm") as fh:
    size = int(fh.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 512 * 2**20, size + 512 * 2**20))
try:
    ServeClient(f"http://127.0.0.1:{server.server_address[1]}").post_json("/v1/predict", {"id": "a"})
except AnswerTooLarge as exc:
    print("refused:", exc)
    sys.exit(0)
sys.exit(1)
'''


def test_an_endless_answer_is_refused_within_bounded_memory_and_time() -> None:
    """A server that announces 1 TB and streams forever: the client reads at most MAX_ANSWER_BYTES (+1) and
    refuses in one line, under a 512 MiB address-space margin and a time limit, in a subprocess."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", ENDLESS_ANSWER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: the server's answer to POST /v1/predict is larger than 16777216 bytes" in done.stdout
