"""`crisis-tool bench --serve URL`: a bounded load generator against a running server, next to `predict`.

Each row: `clients` threads post single-record requests to `URL/v1/predict` for `seconds` (each request
bounded by a timeout), then report posts/s, p50/p99 latency, the server's mean model batch over the run
(`GET /v1/stats` before and after) and errors (HTTP failures and records answered with an error). The
reference row runs the same records through an in-process Predictor of the same bundle (what `predict`
does), so the serving overhead is a measured ratio. Every post is made unique (a counter appended after the
JPEG's end marker, which decoders ignore, and to the text), so neither side answers from its embedding caches:
both decode and encode every post. Standard library HTTP only.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.errors import UsageError

REQUEST_TIMEOUT_S = 30.0
TEXTS = ("Flooding on Main St, cars under water #Harvey", "RT @FEMA: shelters open tonight at the high school",
         "power lines down across the highway", "bridge collapsed after the quake, roads closed",
         "donate now to help the families", "all good here, just heavy rain")


@dataclass(frozen=True)
class LoadRow:
    """One measured row: what ran, posts/s, latency percentiles (ms), mean server batch, errors."""

    name: str
    clients: int
    posts: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None
    errors: int

    @property
    def posts_per_s(self) -> float:
        return self.posts / self.seconds if self.seconds else 0.0


def unique_post(record: dict[str, Any], n: int) -> tuple[str, bytes]:
    """(text, image bytes) of post number `n`: the record's, with `n` appended to both (after the JPEG's end
    marker), so no cache keyed by content can answer it."""
    return f"{record['text']} #{n}", record["image"] + n.to_bytes(8, "little")


def generated_records(n: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """`n` records with distinct 320x240 JPEG photos of noise and tweet-like texts (image as bytes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        records.append({"id": f"b{i}", "text": TEXTS[i % len(TEXTS)], "image": buffer.getvalue()})
    return records


def _request(url: str, body: bytes | None, token: str | None) -> Any:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, body, headers)
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.load(response)


def server_stats(url: str, token: str | None) -> dict[str, float] | None:
    try:
        return _request(f"{url}/v1/stats", None, token)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def serve_row(url: str, records: list[dict[str, Any]], clients: int, seconds: float,
              token: str | None = None) -> LoadRow:
    """Post records (one per request) from `clients` threads for `seconds`; never runs past the deadline by
    more than one request timeout."""
    url = url.rstrip("/")
    try:
        _request(f"{url}/readyz", None, None)
    except (urllib.error.URLError, OSError) as exc:
        raise UsageError(f"--serve {url}: no ready server there ({exc})") from None
    before = server_stats(url, token)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < deadline:
            text, image = unique_post(records[i % len(records)], i)
            body = json.dumps({"id": f"c{k}-{i}", "text": text,
                               "image_b64": base64.b64encode(image).decode("ascii")}).encode()
            start = time.perf_counter()
            try:
                failed = _request(f"{url}/v1/predict", body, token).get("error") is not None
            except (urllib.error.URLError, OSError, ValueError):
                failed = True
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += failed
            i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 2 * REQUEST_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    after = server_stats(url, token)
    mean_batch = None
    if before and after and after.get("batches", 0) > before.get("batches", 0):
        mean_batch = (after["batched_records"] - before["batched_records"]) / (after["batches"] - before["batches"])
    p50, p99 = (np.percentile(np.array(latencies) * 1000, [50, 99]) if latencies else (float("nan"),) * 2)
    return LoadRow("serve (HTTP)", clients, len(latencies), elapsed, float(p50), float(p99), mean_batch, errors[0])


def predict_row(bundle: Path, records: list[dict[str, Any]], seconds: float, threads: int | None) -> LoadRow:
    """The same records through an in-process Predictor (as `predict`), repeated for about `seconds`."""
    from crisis_tool.runtime.predictor import Predictor
    from crisis_tool.runtime.records import Record

    with Predictor.from_bundle(bundle, threads=threads) as predictor:
        predictor.predict([Record("w", *unique_post(records[0], -1 % 2**63))])  # warm-up
        posts, errors, rounds = 0, 0, 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or rounds == 0:
            base = rounds * len(records)
            answers = predictor.predict([Record(f"p{base + i}", *unique_post(r, base + i))
                                         for i, r in enumerate(records)])
            posts += len(answers)
            errors += sum(a.error is not None for a in answers)
            rounds += 1
        elapsed = time.perf_counter() - start
    per_post_ms = 1000 * elapsed / max(posts, 1)
    return LoadRow("predict (in-process)", 1, posts, elapsed, per_post_ms, per_post_ms, float(predictor.batch_size),
                   errors)


def render(rows: list[LoadRow]) -> str:
    """A plain table (fits 80 columns), the ratio to the predict row included."""
    reference = next((r.posts_per_s for r in rows if r.name.startswith("predict")), None)
    lines = [f"{'run':<24}{'clients':>8}{'posts/s':>9}{'ratio':>7}{'p50 ms':>8}{'p99 ms':>8}{'batch':>7}"
             f"{'errors':>8}"]
    for r in rows:
        ratio = f"{r.posts_per_s / reference:.2f}" if reference else "-"
        batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "-"
        name = r.name if len(r.name) <= 23 else r.name[:22] + "…"
        lines.append(f"{name:<24}{r.clients:>8}{r.posts_per_s:>9.1f}{ratio:>7}{r.p50_ms:>8.1f}{r.p99_ms:>8.1f}"
                     f"{batch:>7}{r.errors:>8}")
    return "\n".join(lines)


def run_serve_bench(url: str, bundle: Path, clients: tuple[int, ...], seconds: float, threads: int | None) -> str:
    """`bench --serve`: the predict row, then one serve row per client count; the rendered table."""
    import os

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--serve {url!r}: give the server's base URL, e.g. http://127.0.0.1:8000")
    records = generated_records()
    token = os.environ.get("CRISIS_SERVE_TOKEN")
    rows = [predict_row(bundle, records, seconds, threads)]
    rows += [serve_row(url, records, c, seconds, token) for c in clients]
    return f"bench --serve {url}: {seconds:g} s per row, unique posts (no cache hits)\n" + render(rows)
