"""`crisis-tool bench`: the benchmark, torch-free so that it runs on a Jetson with the lean install.

Modules, one job each: `options` (what a run measures, defaults and bounds), `run` (load, warm up, time
interleaved rows), `rows` (per-row summary and comparisons), `workloads` (inputs and one timed call per
workload), `inputs` (generated or real records), `machine_info` (CPU/GPU/BLAS and the GEMM roofline),
`flops` (FLOPs of an ONNX graph; needs the onnx package), `report` (table, JSON, Markdown, PNG),
`engine_peak` (the roofline: each engine's MatMul peak), `labelled_records` and `task_metrics` (accuracy and F1
per row, `--max-drop`), `decode_modes` (fast against exact decoding), `report_lines` (their header lines and the
speed-against-F1 chart).
"""

from __future__ import annotations

from crisis_tool.runtime.bench.options import BenchOptions
from crisis_tool.runtime.bench.run import run_bench

__all__ = ["BenchOptions", "run_bench"]
