"""`crisis-tool serve` under `bench --serve` load (8 concurrent clients) vs in-process `predict`, one run.

Command (from the repo root; any bundle, e.g. the crisis-tiny one `make demo` exports):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_vs_predict.py --bundle BUNDLE --clients 8 --seconds 20 \
        [--posts-per-request 1,8] [--rounds 3] [--records 64] [--serve-args=--no-ray]

It starts `crisis-tool serve --bundle BUNDLE` with its defaults (a local Ray, 1 replica, loopback) as a
subprocess, waits for `/readyz`, then measures exactly what `crisis-tool bench --bundle BUNDLE --serve URL
--batch-sizes CLIENTS` measures (`runtime/bench/serve_load.py`): the in-process predict row (the Predictor at
its default batch size), then a serve row with `--clients` threads posting unique posts for `--seconds`, one
row per `--posts-per-request` value (1: one post per request, the default of `bench --serve`). With
`--rounds N` the predict row and the serve rows alternate N times (a shared machine's load drifts: each serve
row is compared with the predict row just before it), and the median of the rounds' ratios is reported. It
prints the rows, each round's ratio of serve's posts/s to predict's (issue 22 asks for >= 0.9 at 8 clients),
their median, and the load average before and after, then stops the server (Ctrl-C, as a user would).
`--serve-args '--no-ray'` measures the single-process server instead of Ray Serve.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from crisis_tool.runtime.bench.serve_load import generated_records, predict_row, render, serve_row


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until GET /readyz answers 200; RuntimeError if the server exits or the time runs out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if server.poll() is not None:
            raise RuntimeError(f"crisis-tool serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"crisis-tool serve not ready after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=None, help="Intra-op threads of both sides (default all).")
    parser.add_argument("--posts-per-request", default="1", help="Comma-separated; one serve row each.")
    parser.add_argument("--serve-args", default="", help="Extra `crisis-tool serve` options, e.g. '--no-ray'.")
    parser.add_argument("--rounds", type=int, default=1, help="Alternate the predict and serve rows this often.")
    parser.add_argument("--records", type=int, default=64, help="Distinct generated records; the predict row "
                        "classifies 4x this many per call (fewer: shorter predict rows, finer alternation).")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    threads = ["--threads", str(args.threads)] if args.threads else []
    per_request = [int(n) for n in args.posts_per_request.split(",")]
    load_before = os.getloadavg()
    command = [sys.executable, "-m", "crisis_tool.cli", "serve", "--bundle", str(args.bundle), "--port", str(port),
               *threads, *args.serve_args.split()]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready_s = wait_ready(url, server, 300)
        records = generated_records(args.records)
        with urllib.request.urlopen(f"{url}/v1/model", timeout=30) as response:
            served_model = json.load(response)
        rounds = []
        for _ in range(max(1, args.rounds)):
            predict = predict_row(args.bundle, records, args.seconds, args.threads)
            rounds.append([predict, *(serve_row(url, records, args.clients, args.seconds,
                                                os.environ.get("CRISIS_SERVE_TOKEN"), n) for n in per_request)])
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    load = " / ".join(f"{one:.1f}, {five:.1f}" for one, five, _ in (load_before, os.getloadavg()))
    print(f"bundle {args.bundle}; {os.cpu_count()} CPUs; load average 1 min, 5 min (before / after): {load}; "
          f"server ready after {ready_s:.1f} s; {args.seconds:g} s per row")
    print(f"serve replica: backend {served_model['backend']}, {served_model['provider']}, "
          f"{served_model['threads'] or 'default'} intra-op threads, batch size {served_model['batch_size']}; predict: "
          f"the same bundle loaded as `crisis-tool predict` loads it (backend auto, batch size 32)")
    print(f"serve command: crisis-tool serve {' '.join(command[4:])}")
    for k, rows in enumerate(rounds):
        print(f"round {k + 1} of {len(rounds)}:")
        print(render(rows))
    for j, n in enumerate(per_request):
        ratios = [rows[j + 1].posts_per_s / max(rows[0].posts_per_s, 1e-9) for rows in rounds]
        errors = sum(rows[j + 1].errors for rows in rounds)
        print(f"serve / predict posts/s at {args.clients} clients, {n} post(s) per request: "
              f"{' '.join(f'{r:.2f}' for r in ratios)} (rounds); median {statistics.median(ratios):.2f}x; "
              f"serve errors: {errors}")


if __name__ == "__main__":
    main()
