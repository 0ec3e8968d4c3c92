"""Engine peak probes: one large MatMul run by the same engine, session type and precision as a backend.

A backend's `peak_probe()` hook returns a `PeakProbe` (or None when it has none); bench times it between its
rows and reports each row's FLOP rate as a share of that engine's best MatMul ("% of this engine's peak"),
instead of numpy's BLAS, which measures another library. The models are built in memory by
`crisis_tool.runtime.backends.onnx_matmul` (no `onnx` package needed).

| backend precision | probe                                                                         |
|-------------------|-------------------------------------------------------------------------------|
| fp32              | MatMul fp32                                                                   |
| fp16              | MatMul fp16 (onnxruntime); OpenVINO's fp16 mode computes in f32: MatMul fp32  |
| bf16              | MatMul fp32 compiled with the backend's bf16 inference precision (OpenVINO)   |
| int8              | onnxruntime: MatMulInteger u8 x s8 (its fastest integer GEMM); OpenVINO: Q/DQ |
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crisis_tool.runtime.backends.onnx_matmul import matmul_model

PROBE_SIZE = 1536  # n of the n x n x n MatMul: 7.2 GFLOP, large enough for AMX / VNNI kernels to reach their peak


@dataclass
class PeakProbe:
    """`run()` executes one MatMul of `flops` FLOPs (int8: integer ops) and returns when it is done."""

    run: Callable[[], None]
    flops: float
    what: str  # e.g. "onnxruntime CPUExecutionProvider MatMulInteger u8s8 1024^3, 2 threads"


def onnxruntime_probe(provider: str, options: Any, precision: str, n: int = PROBE_SIZE) -> PeakProbe | None:
    """A MatMul session on `provider` with the backend's SessionOptions; None off the CPU (copies would dominate)."""
    import onnxruntime as ort

    if provider != "CPUExecutionProvider":
        return None
    kinds = {"fp32": ("fp32", "MatMul fp32"), "fp16": ("fp16", "MatMul fp16"),
             "int8": ("int8", "MatMulInteger u8s8")}
    if precision not in kinds:
        return None
    kind, label = kinds[precision]
    model, a = matmul_model(n, n, n, kind)
    with contextlib.redirect_stdout(io.StringIO()):
        session = ort.InferenceSession(model, sess_options=options, providers=[provider])
    feeds = {"A": a}
    threads = options.intra_op_num_threads or "default"
    return PeakProbe(lambda: session.run(None, feeds), 2.0 * n**3,
                     f"onnxruntime {provider} {label} {n}^3, {threads} threads")


def openvino_probe(core: Any, compiled: Any, device: str, int8: bool, n: int = PROBE_SIZE) -> PeakProbe | None:
    """A MatMul compiled for `device` with the inference precision and threads read back from `compiled`."""
    config: dict[str, Any] = {}
    for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS"):
        with contextlib.suppress(RuntimeError):
            config[key] = compiled.get_property(key)
    model, a = matmul_model(n, n, n, "qdq" if int8 else "fp32")
    probe = core.compile_model(core.read_model(model, b""), device, config)
    request = probe.create_infer_request()
    hint = config.get("INFERENCE_PRECISION_HINT")
    label = f"{'Q/DQ int8' if int8 else 'MatMul'} ({getattr(hint, 'get_type_name', lambda: hint)()})"
    return PeakProbe(lambda: request.infer({0: a}), 2.0 * n**3, f"openvino {device} {label} {n}^3, "
                     f"{config.get('INFERENCE_NUM_THREADS', 'default')} threads")
