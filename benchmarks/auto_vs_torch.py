"""`--backend auto` against PyTorch eager, end to end (read + decode + preprocess, tokenize, encoders, head).

Command (from the repo root, `pip install -e '.[torch,openvino]'`; BUNDLE: e.g. the calibrated ViT-B-32 int8 bundle
that `int8_export_vitb32.py` writes):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/auto_vs_torch.py --bundle BUNDLE --batch 32 --rounds 3

One process, one set of generated records (photo-like JPEGs of varied sizes, tweet-length texts), a cache-free
Predictor per row at --batch; rows run round-robin (--rounds, best round counts) so machine drift hits every row
alike. Rows: torch eager (exact decode), auto (exact decode), auto with --decode fast. Also printed: auto's choice
and why (its probe, in an empty temporary cache: the cold probe cost is printed too), the batch-invariance check
of the chosen backend (32 mixed records alone vs together), and the CPU flags and load average.
`crisis-tool bench --backends torch,auto --batch-sizes 32 --component e2e` gives the same rows once bench passes
no precision to `auto`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from crisis_tool.runtime.backends import create_backend
from crisis_tool.runtime.backends.auto import machine_info
from crisis_tool.runtime.batch_invariance import check_batch_invariance, mixed_inputs
from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2, help="batches of distinct records per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    info = machine_info(None)
    print(f"machine: {info['cpu']}, flags {info['flags']}, {info['cpus']} CPUs, GPUs {info['gpus'] or 'none'}, "
          f"engines {info['engines']}, load average {os.getloadavg()[0]:.2f} at start")
    os.environ["CRISIS_TOOL_CACHE_DIR"] = tempfile.mkdtemp(prefix="crisis-auto-")  # a cold probe, user cache untouched
    bundle = Bundle.load(args.bundle)
    start = time.perf_counter()
    auto = create_backend("auto", bundle)
    print(f"auto probe + load (cold cache): {time.perf_counter() - start:.1f} s")
    print(auto.choice.line())
    for label, numbers in auto.choice.probes.items():
        print(f"  {label:28s} {numbers}")
    invariance = check_batch_invariance(auto, mixed_inputs(bundle.dims, n=32, seed=5), name="auto")
    print(invariance.describe())
    torch = create_backend("torch", bundle)
    rows = {"torch": (torch, "exact"), "auto": (auto, "exact"), "auto --decode fast": (auto, "fast")}
    with tempfile.TemporaryDirectory() as folder:
        records = generate_records(args.batch * args.batches, Path(folder), seed=11)
        predictors = {name: Predictor(bundle, backend, batch_size=args.batch, cache_size=0, decode=decode)
                      for name, (backend, decode) in rows.items()}
        for predictor in predictors.values():
            predictor.predict(records[: args.batch])  # warm-up
        best = dict.fromkeys(predictors, float("inf"))
        for _ in range(args.rounds):
            for name, predictor in predictors.items():
                t0 = time.perf_counter()
                out = predictor.predict(records)
                best[name] = min(best[name], time.perf_counter() - t0)
                assert all(p.error is None for p in out), [p.error for p in out if p.error][:1]
    base = len(records) / best["torch"]
    for name, seconds in best.items():
        rate = len(records) / seconds
        print(f"e2e batch {args.batch}: {name:20s} {rate:7.2f} posts/s  {rate / base:5.2f}x torch eager")


if __name__ == "__main__":
    main()
