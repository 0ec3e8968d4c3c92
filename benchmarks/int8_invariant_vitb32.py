"""Batch-invariant int8 on the ViT-B/32 encoders: static Q/DQ and per-row int8 against fp32, onnxruntime and OpenVINO.

Command (from the repo root; BUNDLE is any ViT-B-32 bundle, e.g. the one `e2e_cpu.py` writes; only its fp32 graphs
are read, the int8 graphs are made here in --workdir):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int8_invariant_vitb32.py --bundle BUNDLE --workdir /tmp/int8inv

Per encoder (image at batch --batch, text at batch --batch on tweet-length texts): the static Q/DQ graph (7-bit
weights, min/max activation ranges calibrated on --calib generated records), and the per-row int8 graph
(`export.qdq.rowwise_int8_graph`, no calibration). For each graph x engine (onnxruntime CPU, OpenVINO CPU): items/s
(best of --reps interleaved rounds; every row of one round runs back to back), min cosine to the fp32 graph on the
same inputs, and the batch-invariance check (each of 32 mixed records alone vs in the batch). The machine's CPU
flags and load average are printed first: int8 speed depends on VNNI / AMX.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.export.qdq import qdq_graph, rowwise_int8_graph
from crisis_tool.runtime.backends.auto import machine_info
from crisis_tool.runtime.batch_invariance import check_batch_invariance, mixed_inputs
from crisis_tool.runtime.bundle import Bundle


def _engines(path: Path, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runs: dict[str, Any] = {"onnxruntime": lambda feeds: session.run(None, feeds)[0]}
    try:
        import openvino as ov
    except ImportError:
        return runs
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    runs["openvino"] = lambda feeds: np.array(request.infer(feeds)[compiled.output(0)])
    return runs


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--workdir", default="/tmp/crisis-int8-invariant")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    info = machine_info(args.threads)
    print(f"machine: {info['cpu']}, flags {info['flags']}, {info['cpus']} CPUs, engines {info['engines']}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    bundle = Bundle.load(args.bundle)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    mixed = mixed_inputs(bundle.dims, n=max(args.batch, args.calib, 32), seed=3)
    ids = mixed.input_ids[:, :32]  # tweet length (median 18, p90 27 tokens); the batch is trimmed to 32
    encoders = (("image_encoder", "pixel_values", mixed.pixel_values), ("text_encoder", "input_ids", ids))
    for graph, name, data in encoders:
        src = bundle.graph_path(graph, "fp32")
        calib = [{name: data[i : i + 4]} for i in range(0, args.calib, 4)]
        paths = {"fp32": src}
        start = time.perf_counter()
        paths["static"] = qdq_graph(src, work / f"{graph}.static.onnx", calib, flavour="cpu")
        paths["rowwise"] = rowwise_int8_graph(src, work / f"{graph}.rowwise.onnx")
        print(f"\n{graph}: int8 graphs made in {time.perf_counter() - start:.0f} s; batch {args.batch}")
        runs = {(variant, engine): fn for variant, path in paths.items()
                for engine, fn in _engines(path, args.threads).items()}
        feeds = {name: np.ascontiguousarray(data[: args.batch])}
        best = dict.fromkeys(runs, float("inf"))
        outputs = {key: fn(feeds) for key, fn in runs.items()}  # warm-up
        for _ in range(args.reps):
            for key, fn in runs.items():
                t0 = time.perf_counter()
                fn(feeds)
                best[key] = min(best[key], time.perf_counter() - t0)
        reference = outputs[("fp32", "onnxruntime")]
        for key, fn in runs.items():
            invariance = check_batch_invariance(fn, {name: data[:32]}, precision="fp32" if key[0] == "fp32" else "int8")
            speedup = best[("fp32", "onnxruntime")] / best[key]
            print(f"  {key[0]:8s} {key[1]:12s} {args.batch / best[key]:8.1f} items/s  {speedup:5.2f}x ort fp32  "
                  f"cosine {_cosine(outputs[key], reference):.6f}  invariance {invariance.max_diff:.2g} "
                  f"({'pass' if invariance.passed else 'FAIL'})")


if __name__ == "__main__":
    main()
