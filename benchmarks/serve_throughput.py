"""`crisis-tool serve` at 32 concurrent clients vs the Predictor in one process (`predict`), one run, same records.

Machine: the 2-core CI VM (no GPU), onnxruntime on CPU, Ray 2.60. Command (from the repo root):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_throughput.py --bundle BUNDLE --records 1000

Records: `--records` generated photo-like JPEGs of varied sizes (all distinct, so no embedding cache hits)
with texts of real tweet lengths (`crisis_tool.runtime.bench.inputs.generate_records`). `predict`: one
Predictor (`--predict-batch` records per batch, its default 32) classifies them all from bytes in memory.
`serve`: a local Ray with 1 replica (`--max-batch`, `--batch-wait-ms`); `--clients` threads each POST one
record per request over a kept-alive connection. Printed: records/s of both, their ratio, the mean batch the
server formed, p50/p99 request latency; every served answer is checked against the direct Predictor's label.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.predictor import Predictor
from crisis_tool.runtime.records import Record
from crisis_tool.runtime.serve.cluster import LOCAL_ONLY_ENV, ray_session
from crisis_tool.runtime.serve.deployment import DEPLOYMENT_NAME, warmup_record
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions
from crisis_tool.runtime.serve.server import start_server


def post_all(port: int, bodies: list[bytes], clients: int) -> tuple[list[dict], list[float], float]:
    """POST every body from `clients` threads; (answers in order, latencies in s, wall seconds)."""
    answers: list[dict] = [{}] * len(bodies)
    latencies: list[float] = []
    counter = iter(range(len(bodies)))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                conn.close()
                return
            start = time.perf_counter()
            conn.request("POST", "/v1/predict", bodies[i], {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            with lock:
                answers[i] = answer if response.status == 200 else {"error": f"HTTP {response.status}"}
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, latencies, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--predict-batch", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18765)
    args = parser.parse_args()
    os.environ.setdefault(LOCAL_ONLY_ENV, "0")

    with tempfile.TemporaryDirectory() as tmp:
        generated = generate_records(args.records, tmp, seed=3)
        records = [Record(r.id, r.text, Path(str(r.image)).read_bytes()) for r in generated]
    with Predictor.from_bundle(args.bundle, batch_size=args.predict_batch) as predictor:
        predictor.predict([warmup_record()])  # as each serve replica does before it is ready
        start = time.perf_counter()
        direct = predictor.predict(records)
        predict_s = time.perf_counter() - start
    bodies = [json.dumps({"id": r.id, "text": r.text, "image_b64": base64.b64encode(bytes(r.image or b"")).decode()})
              .encode() for r in records]

    with ray_session(None):
        from ray import serve

        start_server(PredictorOptions(bundle=args.bundle.resolve()),
                     ServeOptions(port=args.port, batch_size=args.max_batch, batch_wait_ms=args.batch_wait_ms))
        handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name="crisis-tool")
        answers, latencies, serve_s = post_all(args.port, bodies, args.clients)
        stats = handle.stats.remote().result()
        serve.shutdown()

    wrong = sum(a.get("label") != d.label or a.get("error") is not None for a, d in zip(answers, direct, strict=True))
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    n = len(records)
    print(f"records: {n} distinct; bundle {args.bundle}; {os.cpu_count()} CPUs")
    print(f"predict (one process, batch {args.predict_batch}): {n / predict_s:.1f} records/s")
    print(f"serve ({args.clients} clients, 1 replica, max batch {args.max_batch}, wait {args.batch_wait_ms} ms): "
          f"{n / serve_s:.1f} records/s; mean batch {stats['mean_batch']:.1f}; p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"serve / predict throughput: {(n / serve_s) / (n / predict_s):.2f}x; answers differing from predict: "
          f"{wrong}")


if __name__ == "__main__":
    main()
