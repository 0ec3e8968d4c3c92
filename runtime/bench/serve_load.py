"""`crisis-tool bench --serve URL`: a bounded load generator against a running server, next to `predict`.

Each row: `clients` threads post requests of `posts_per_request` records (1 by default: one post per request,
the hardest case for a server) to `URL/v1/predict` for `seconds`, each thread over one kept-alive connection
(`serve.client.ServeClient`, as a real client would; retries off, so failures are counted, not hidden), each
request bounded by a timeout. It reports posts/s, p50/p99 request latency, the server's mean model batch over
the run (`GET /v1/stats` before and after) and errors (HTTP failures and records answered with an error). The
reference row runs the same records through an in-process Predictor of the same bundle at its default batch
size (what `predict` does), so the serving overhead is a measured ratio. Every post is made unique (a counter
appended after the JPEG's end marker, which decoders ignore, and to the text), so neither side answers from
its embedding caches: both decode and encode every post. Each row, predict's too, starts its counter at a
fresh random 10-digit number, so a second row (or a second run against the same long-lived server) never
meets a post the server has already cached, and both sides' texts have the same number of tokens (a longer
number on one side made its text encoder slower). Standard library HTTP only.
"""

from __future__ import annotations

import base64
import io
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.serve.client import ServeClient, ServerUnavailable

REQUEST_TIMEOUT_S = 30.0
PREDICT_ROUND = 4  # the predict row classifies 4 x the records per call, as `predict` streams a long file
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


def server_stats(url: str, token: str | None) -> dict[str, float] | None:
    try:
        answer = ServeClient(url, token, timeout_s=REQUEST_TIMEOUT_S).request("GET", "/v1/stats")
    except (ServerUnavailable, OSError):
        return None
    return answer.body if answer.status == 200 and isinstance(answer.body, dict) else None


OFFSET_LOW, OFFSET_HIGH = 10**9, 9 * 10**9  # post numbers stay 10-digit for rows of up to 10**9 posts


def fresh_offset() -> int:
    """A random 10-digit starting post number: rows (and runs) against one server never repeat a post, and
    every row's texts are equally long."""
    return OFFSET_LOW + secrets.randbelow(OFFSET_HIGH - OFFSET_LOW)


def serve_row(url: str, records: list[dict[str, Any]], clients: int, seconds: float,
              token: str | None = None, posts_per_request: int = 1, first_post: int | None = None) -> LoadRow:
    """Post records (`posts_per_request` per request) from `clients` threads for `seconds`, post numbers
    counting from `first_post` (a fresh random offset by default); never runs past the deadline by more than
    one request timeout."""
    offset = fresh_offset() if first_post is None else first_post
    url = url.rstrip("/")
    try:
        ready = ServeClient(url, timeout_s=REQUEST_TIMEOUT_S).request("GET", "/readyz")
    except (ServerUnavailable, OSError) as exc:
        raise UsageError(f"--serve {url}: no server there ({exc})") from None
    if ready.status != 200:
        raise UsageError(f"--serve {url}: the server is not ready (GET /readyz: HTTP {ready.status})")
    before = server_stats(url, token)
    latencies: list[float] = []
    counts = [0, 0]  # posts answered or failed, errors
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        session = ServeClient(url, token, timeout_s=REQUEST_TIMEOUT_S)
        i = k * posts_per_request
        while time.monotonic() < deadline:
            posts = [unique_post(records[(i + j) % len(records)], offset + i + j) for j in range(posts_per_request)]
            body = [{"id": f"c{k}-{offset + i + j}", "text": text, "image_b64": base64.b64encode(image).decode("ascii")}
                    for j, (text, image) in enumerate(posts)]
            start = time.perf_counter()
            try:
                answer = session.post_json("/v1/predict", body)
                ok = answer.status == 200 and isinstance(answer.body, list)
                failed = posts_per_request if not ok else sum(a.get("error") is not None for a in answer.body)
            except (ServerUnavailable, OSError):
                failed = posts_per_request
            with lock:
                latencies.append(time.perf_counter() - start)
                counts[0] += posts_per_request
                counts[1] += failed
            i += clients * posts_per_request
        session.close()

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
    name = "serve (HTTP)" if posts_per_request == 1 else f"serve ({posts_per_request} per request)"
    return LoadRow(name, clients, counts[0], elapsed, float(p50), float(p99), mean_batch, counts[1])


def predict_row(bundle: Path, records: list[dict[str, Any]], seconds: float, threads: int | None,
                first_post: int | None = None) -> LoadRow:
    """The same records through an in-process Predictor loaded as `predict` loads it (its defaults: `--backend
    auto`, batch size 32), repeated for about `seconds`, post numbers counting from `first_post` (a fresh
    random offset by default, as the serve rows')."""
    offset = fresh_offset() if first_post is None else first_post
    from crisis_tool.runtime.predictor_options import PredictorOptions
    from crisis_tool.runtime.records import Record

    with PredictorOptions(bundle=Path(bundle), threads=threads).load() as predictor:
        predictor.predict([Record("w", *unique_post(records[0], offset - 1))])  # warm-up
        posts, errors, rounds = 0, 0, 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or rounds == 0:
            base = offset + rounds * PREDICT_ROUND * len(records)  # a round: several batches, decode overlapping
            answers = predictor.predict([Record(f"p{base + i}", *unique_post(records[i % len(records)], base + i))
                                         for i in range(PREDICT_ROUND * len(records))])
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


def run_serve_bench(url: str, bundle: Path, clients: tuple[int, ...], seconds: float, threads: int | None,
                    posts_per_request: int = 1) -> str:
    """`bench --serve`: the predict row, then one serve row per client count; the rendered table."""
    import os

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--serve {url!r}: give the server's base URL, e.g. http://127.0.0.1:8000")
    records = generated_records()
    token = os.environ.get("CRISIS_SERVE_TOKEN")
    rows = [predict_row(bundle, records, seconds, threads)]
    rows += [serve_row(url, records, c, seconds, token, posts_per_request) for c in clients]
    return f"bench --serve {url}: {seconds:g} s per row, unique posts (no cache hits)\n" + render(rows)
