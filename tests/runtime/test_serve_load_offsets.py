"""`bench --serve` rows never repeat a post: a second row against the same server would be answered from its
embedding cache and look faster than the model is (it did: 1.5x at 8 posts per request, measured after a
1-per-request row over the same post numbers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crisis_tool.runtime.bench.serve_load import generated_records, serve_row


class Recorder(BaseHTTPRequestHandler):
    """A stand-in server: /readyz, /v1/stats, and /v1/predict answering every record and keeping its text."""

    texts: list[str] = []
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._send({"batches": 0, "batched_records": 0} if self.path == "/v1/stats" else {"ready": True})

    def do_POST(self) -> None:  # noqa: N802
        records = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.texts.extend(r["text"] for r in records)
        self._send([{"id": r["id"], "error": None} for r in records])


@pytest.fixture()
def recorder() -> Iterator[str]:
    Recorder.texts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rows_against_one_server_never_repeat_a_post(recorder: str) -> None:
    records = generated_records(4)
    first = serve_row(recorder, records, clients=2, seconds=0.3)
    seen = len(Recorder.texts)
    second = serve_row(recorder, records, clients=2, seconds=0.3, posts_per_request=3)
    assert first.posts == seen and second.posts == len(Recorder.texts) - seen and second.errors == 0
    assert len(set(Recorder.texts)) == len(Recorder.texts), "a post was sent twice"


def test_a_given_offset_is_kept(recorder: str) -> None:
    serve_row(recorder, generated_records(4), clients=1, seconds=0.2, first_post=1000)
    assert Recorder.texts[0].endswith("#1000") and Recorder.texts[1].endswith("#1001")


def test_predict_and_serve_rows_number_their_posts_alike(recorder: str, tiny_bundle, monkeypatch) -> None:
    """Both rows' texts carry a 10-digit post number: a longer number on one side only (a 19-digit one on the
    serve side, 1 to 4 digits on predict's) gave its text encoder more tokens and made serving look slower."""
    from crisis_tool.runtime.bench import serve_load

    numbers: list[int] = []
    real = serve_load.unique_post

    def recording(record: dict, n: int) -> tuple[str, bytes]:
        numbers.append(n)
        return real(record, n)

    monkeypatch.setattr(serve_load, "unique_post", recording)
    records = generated_records(4)
    serve_load.predict_row(tiny_bundle, records, seconds=0.1, threads=1)
    predicted = len(numbers)
    serve_row(recorder, records, clients=2, seconds=0.2)
    assert 0 < predicted < len(numbers)
    assert {len(str(n)) for n in numbers} == {10}, sorted({len(str(n)) for n in numbers})
    assert {len(t) - len(t.rstrip("0123456789")) for t in Recorder.texts} == {10}
