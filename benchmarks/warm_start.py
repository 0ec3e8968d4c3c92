"""Cold vs warm start to the first answer, per backend, each in a fresh process (`runtime/bench/start_time.py`).

Command (from the repo root; any bundle, e.g. the ViT-B-32 one that `e2e_cpu.py` or `int8_export_vitb32.py`
writes):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/warm_start.py --bundle BUNDLE --backends onnxruntime,openvino,auto

Cold: an empty compile cache (onnxruntime optimises each graph and saves it; OpenVINO compiles and saves its
blob; auto also probes). Warm: the same cache, filled by the cold run. Prints one line per backend.
"""

from __future__ import annotations

import argparse
import os

from crisis_tool.runtime.bench.start_time import measure_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--backends", default="onnxruntime,openvino,auto")
    parser.add_argument("--precision", default=None, help="passed to every backend but auto (default: bundle's)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    for backend in args.backends.split(","):
        precision = None if backend == "auto" else args.precision
        r = measure_start(args.bundle, backend, precision)
        print(f"{backend:12s} cold {r['cold_s']:6.2f} s (load {r['cold_load_s']:.2f})  warm {r['warm_s']:6.2f} s "
              f"(load {r['warm_load_s']:.2f})  imports {r['import_s']:.2f} s  -> {r['chosen']}")


if __name__ == "__main__":
    main()
