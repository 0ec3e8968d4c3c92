"""Bench rows: the backends under test, their timed samples, and each row's summary with comparisons."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crisis_tool.runtime.backends import Backend
from crisis_tool.runtime.bench.workloads import STAGES, compare, workload_files
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.predictor import Predictor


@dataclass
class BackendUnderTest:
    """One backend variant (backend x precision), loaded once and shared by its rows (one per batch size)."""

    variant: str  # the registry variant as given to --backends, e.g. "onnxruntime-int8"
    name: str
    precision: str
    backend: Backend | None = None
    predictor: Predictor | None = None
    status: str = "ok"
    load_s: float | None = None

    def close(self) -> None:
        """Release the predictor's pool and the backend."""
        for obj in (self.predictor, self.backend):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()


@dataclass
class Row:
    subject: BackendUnderTest
    batch_size: int
    text_tokens: int | None = None  # text tokens of the inputs (None: real tweet lengths)
    decode: str = "exact"  # the Predictor's image decode mode (e2e rows and task metrics)
    status: str = "ok"
    latencies: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    flops: list[float] = field(default_factory=list)
    transfer: list[float] = field(default_factory=list)
    first_run_s: float | None = None
    outputs: dict[str, np.ndarray] | None = None

    @property
    def key(self) -> tuple[int | None, int]:
        return self.text_tokens, self.batch_size

    def fail(self, exc: BaseException) -> None:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.status = f"failed: {type(exc).__name__}: {text}".rstrip(": ")

    def clear_samples(self) -> None:
        for samples in (self.latencies, self.stages, self.flops, self.transfer):
            samples.clear()


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1e3, q)), 4)


def summarise(row: Row, workload: str, gemm: float | None, bundle: Bundle, cold: float) -> dict[str, Any]:
    """One result row: status, size, latency percentiles, throughput, stage split, FLOP rate, cold start."""
    s = row.subject
    out: dict[str, Any] = {
        "backend": s.name, "choice": s.variant, "precision": s.precision, "workload": workload,
        "provider": s.backend.provider if s.backend else None, "batch_size": row.batch_size,
        "text_tokens": row.text_tokens or "real", "decode": row.decode, "status": row.status,
        "model_mb": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "items_per_s": None, "reps": 0,
        "speedup_vs_torch": None, "max_abs_diff": None, "cosine": None, "top1_agreement": None,
        "gflop_per_item": None, "gflops": None, "roofline_pct": None, "h2d_ms": None, "stages_ms": None,
        "non_encoder_share": None, "cold_start_s": None,
        "validated": bundle.manifest.validated.get(s.precision) if s.name != "torch" else None,
    }
    if s.backend is not None:
        files = [f for f in workload_files(s.backend, bundle, workload) if f.is_file()]
        out["model_mb"] = round(sum(f.stat().st_size for f in files) / 1e6, 3) if files else None
    if row.status != "ok" or not row.latencies:
        return out
    total = float(sum(row.latencies))
    out.update(p50_ms=_ms(row.latencies, 50), p90_ms=_ms(row.latencies, 90), p99_ms=_ms(row.latencies, 99),
               reps=len(row.latencies), items_per_s=round(row.batch_size * len(row.latencies) / total, 4))
    if row.first_run_s is not None and s.load_s is not None:
        out["cold_start_s"] = round(cold + s.load_s + row.first_run_s, 4)
    if row.transfer:
        out["h2d_ms"] = round(1e3 * float(np.median(row.transfer)), 4)
    flops = float(sum(row.flops))
    if row.stages:
        out["stages_ms"] = {k: round(1e3 * float(np.median(row.stages[k])), 4) for k in (*STAGES, "total")}
        enc = float(sum(row.stages["image_encoder"]) + sum(row.stages["text_encoder"]))
        out["non_encoder_share"] = round(1.0 - enc / total, 4)
        total = enc  # encoder GFLOP/s of an e2e row: FLOPs over the encoder stages' time
    if flops > 0:
        out["gflop_per_item"] = round(flops / (row.batch_size * len(row.latencies)) / 1e9, 6)
        out["gflops"] = round(flops / total / 1e9, 3)
        if gemm:
            out["roofline_pct"] = round(100.0 * out["gflops"] / gemm, 2)
    return out


def add_comparisons(results: list[dict[str, Any]], rows: list[Row], reference: Row | None) -> None:
    """speedup_vs_torch (ratio of the stored items_per_s) and parity vs the reference row's outputs."""
    torch_ips = {(row.key, row.decode): res["items_per_s"] for res, row in zip(results, rows, strict=True)
                 if row.subject.variant == "torch" and res["items_per_s"]}
    refs = {r.key: r.outputs for r in rows if reference and r.subject is reference.subject and r.outputs}
    for res, row in zip(results, rows, strict=True):
        if res["items_per_s"] and (row.key, row.decode) in torch_ips:
            res["speedup_vs_torch"] = res["items_per_s"] / torch_ips[row.key, row.decode]
        ref = refs.get(row.key)
        if row.outputs is not None and ref is not None:
            res.update(compare(row.outputs, ref))
