"""`crisis-tool bench`: latency and throughput of one bundle on several backends, side by side.

One row per backend x precision x batch size (x text-length set, when `text_tokens` lists several). Method:
each row is warmed up, then repetitions run round by round (one repetition of every row per round, rows
interleaved, plus one GEMM probe per round) until the time budget is spent, so drift on a noisy
machine hits all rows alike. PyTorch eager (the "torch" backend, only when torch is importable) is the
reference row: speedup = items/s ratio, parity = max |diff|, min cosine and top-1 agreement on the same
inputs. A backend or precision that cannot run here is a row with status "unavailable: reason".
Torch-free: the torch backend is reached through the backend registry only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime import bench_inputs, bench_workloads
from crisis_tool.runtime.backends import Backend, backend_unavailable_reason, create_backend
from crisis_tool.runtime.bench_workloads import COMPONENT_CHOICES, STAGES, InputBatch, graph_files, torch_model_mb
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import CrisisToolError, MissingDependencyError, UsageError
from crisis_tool.runtime.machine_info import GemmProbe, cpu_count, machine_header
from crisis_tool.runtime.predictor import Predictor

# choice -> (registry backend, precision)
BACKEND_CHOICES: dict[str, tuple[str, str]] = {
    "torch": ("torch", "fp32"),
    "onnxruntime": ("onnxruntime", "fp32"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
    "onnxruntime-fp16": ("onnxruntime", "fp16"),
    "tensorrt": ("tensorrt", "fp32"),
    "tensorrt-fp16": ("tensorrt", "fp16"),
    "tensorrt-int8": ("tensorrt", "int8"),
}
DEFAULT_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "onnxruntime-fp16", "tensorrt", "tensorrt-fp16")
MIN_REPS = 3


@dataclass
class BenchOptions:
    bundle: Path
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    component: str = "e2e"
    seconds: float = 3.0  # timed budget per row
    warmup: int = 2
    threads: int | None = None
    records: Path | None = None
    image_root: Path | None = None
    # generated text lengths, one row set each: None = real tweet lengths, N = every text N tokens (77: no
    # trimming possible, the fixed-length baseline)
    text_tokens: tuple[int | None, ...] = (None,)
    seed: int = 0
    gemm_seconds: float = 1.5
    measure_gemm: bool = True

    def check(self) -> None:
        unknown = [b for b in self.backends if b not in BACKEND_CHOICES]
        if unknown:
            raise UsageError(f"unknown backend(s) {', '.join(unknown)} (choose from {', '.join(BACKEND_CHOICES)})")
        if not self.backends:
            raise UsageError("--backends: give at least one backend")
        if self.component not in COMPONENT_CHOICES:
            raise UsageError(f"--component {self.component!r}: choose from {', '.join(COMPONENT_CHOICES)}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError("--batch-sizes: positive integers, e.g. 1,8,32")
        if self.seconds <= 0 or self.warmup < 0 or (self.threads is not None and self.threads < 1):
            raise UsageError("--seconds must be > 0, --warmup >= 0, --threads >= 1")
        if not self.text_tokens or any(t is not None and not 2 <= t <= 77 for t in self.text_tokens):
            raise UsageError("--text-tokens: 'real' or token counts between 2 and 77, e.g. real,77")


@dataclass
class Engine:
    """One backend choice, loaded once and shared by its rows (one per batch size)."""

    choice: str
    name: str
    precision: str
    backend: Backend | None = None
    predictor: Predictor | None = None
    status: str = "ok"
    load_s: float | None = None
    sync: Callable[[], None] | None = None


@dataclass
class Row:
    engine: Engine
    batch_size: int
    variant: int | None = None  # text tokens of the inputs (None: real tweet lengths)
    status: str = "ok"
    latencies: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    flops: list[float] = field(default_factory=list)
    transfer: list[float] = field(default_factory=list)
    first_run_s: float | None = None
    outputs: dict[str, np.ndarray] | None = None

    @property
    def key(self) -> tuple[int | None, int]:
        return self.variant, self.batch_size


def _unavailable(bundle: Bundle, name: str, precision: str) -> str | None:
    if name == "torch" and importlib.util.find_spec("torch") is None:
        return "unavailable: torch is not installed (pip install 'crisis-tool[torch]')"
    if name == "tensorrt":
        reason = backend_unavailable_reason(name)
        if reason:
            return f"unavailable: {reason}"
        if not (bundle.manifest.get("engines") or {}).get(precision):
            return f"unavailable: bundle has no {precision} TensorRT engines (crisis-tool export --engine trt)"
    if name == "onnxruntime" and precision not in bundle.manifest["graphs"]:
        return f"unavailable: bundle has no {precision} graphs (has {', '.join(bundle.precisions())})"
    return None


def _create(name: str, bundle: Bundle, precision: str, threads: int) -> Backend:
    if name == "torch":
        import torch  # noqa: PLC0415 - optional reference backend, only when installed

        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return create_backend("torch", bundle, precision=precision, device=device)
    options = {"threads": threads} if name == "onnxruntime" else {}
    return create_backend(name, bundle, precision=precision, **options)


def load_engine(choice: str, bundle: Bundle, opts: BenchOptions, threads: int) -> Engine:
    """Create the backend (and a cache-free Predictor for e2e); a failure becomes the engine's status."""
    name, precision = BACKEND_CHOICES[choice]
    engine = Engine(choice, name, precision)
    reason = _unavailable(bundle, name, precision)
    if reason:
        engine.status = reason
        return engine
    start = time.perf_counter()
    try:
        engine.backend = _create(name, bundle, precision, threads)
        if opts.component == "e2e":
            engine.predictor = Predictor(bundle, engine.backend, max_batch=max(opts.batch_sizes), cache_size=0)
    except MissingDependencyError as exc:
        engine.status = f"unavailable: {exc}"
        return engine
    except Exception as exc:  # noqa: BLE001 - a broken backend is a row status, not a crash
        engine.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return engine
    engine.load_s = time.perf_counter() - start
    engine.sync = bench_workloads.sync_hook(engine.backend)
    return engine


def _records(opts: BenchOptions, tmp: Path, needed: int, variant: int | None) -> list:
    if opts.records is not None:
        return bench_inputs.load_records(opts.records, opts.image_root)
    return bench_inputs.generate_records(needed, tmp / "images", opts.seed, variant)


def _batch_count(batch_size: int) -> int:
    return max(2, min(4, -(-64 // batch_size)))


def _text_flops(counter: Any, path: Path, cache: dict[int, float], width: int) -> float:
    if width not in cache:
        cache[width] = float(counter.count_flops(path, {"B": 1, "L": width}))
    return cache[width]


def attach_flops(bundle: Bundle, component: str, inputs: dict[tuple[int | None, int], list[InputBatch]]) -> str | None:
    """Per-batch encoder FLOPs from the fp32 graphs; returns None, or why FLOPs are unknown ("n/a")."""
    if component == "head":
        return "head FLOPs are negligible"
    try:
        from crisis_tool.runtime import onnx_flops
    except ImportError:
        return "n/a: the onnx package is not installed (FLOP counting needs it)"
    try:
        size = int(bundle.preprocess_config.get("size", 224))
        image_dims = {"B": 1, "H": size, "W": size}
        image_item = float(onnx_flops.count_flops(bundle.graph_path("image_encoder", "fp32"), image_dims))
        text_path, cache = bundle.graph_path("text_encoder", "fp32"), {}
        for batches in inputs.values():
            for b in batches:
                if component in ("e2e", "image"):
                    b.flops["image_encoder"] = image_item * b.size
                if component in ("e2e", "text"):
                    width = int(b.ids.shape[1])  # type: ignore[union-attr]
                    b.flops["text_encoder"] = _text_flops(onnx_flops, text_path, cache, width) * b.size
    except Exception as exc:  # noqa: BLE001 - FLOPs are informative only
        return f"n/a: {exc}"
    return None


def _run_row(row: Row, component: str, batch: InputBatch) -> None:
    engine = row.engine
    before = bench_workloads.transfer_seconds(engine.backend)  # type: ignore[arg-type]
    elapsed, stages, _ = bench_workloads.call_once(component, engine.backend, engine.predictor, batch,  # type: ignore[arg-type]
                                                   engine.sync)
    after = bench_workloads.transfer_seconds(engine.backend)  # type: ignore[arg-type]
    row.latencies.append(elapsed)
    row.flops.append(sum(batch.flops.values()))
    for key, value in stages.items():
        row.stages.setdefault(key, []).append(value)
    if before is not None and after is not None:
        row.transfer.append(after - before)


def _fail(row: Row, exc: BaseException) -> None:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    row.status = f"failed: {type(exc).__name__}: {text}".rstrip(": ")


def time_rows(rows: list[Row], inputs: dict[tuple[int | None, int], list[InputBatch]], opts: BenchOptions,
              progress: Callable[[str], None] | None = None, probe: Callable[[], None] | None = None) -> None:
    """Warm up every row, then interleave one repetition per row per round until the budget is spent.

    `probe` (the GEMM roofline) runs once per round too, so it sees the same machine drift as the rows.
    """
    live = [r for r in rows if r.status == "ok"]
    for row in live:
        for i in range(max(1, opts.warmup)):
            try:
                start = time.perf_counter()
                _run_row(row, opts.component, inputs[row.key][i % len(inputs[row.key])])
                if i == 0:
                    row.first_run_s = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001
                _fail(row, exc)
                break
        for samples in (row.latencies, row.stages, row.flops, row.transfer):
            samples.clear()
    live = [r for r in live if r.status == "ok"]
    budget = opts.seconds * len(live)
    start, rnd = time.perf_counter(), 0
    while live and (rnd < MIN_REPS or time.perf_counter() - start < budget):
        for row in live:
            batches = inputs[row.key]
            try:
                _run_row(row, opts.component, batches[rnd % len(batches)])
            except Exception as exc:  # noqa: BLE001
                _fail(row, exc)
        live = [r for r in live if r.status == "ok"]
        if probe is not None:
            probe()
        rnd += 1
        if progress and rnd % 5 == 0:
            progress(f"round {rnd}, {time.perf_counter() - start:.1f}/{budget:.1f} s")


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1e3, q)), 4)


def summarise(row: Row, component: str, gemm: float | None, bundle: Bundle, cold: float) -> dict[str, Any]:
    e = row.engine
    out: dict[str, Any] = {
        "backend": e.name, "choice": e.choice, "precision": e.precision, "component": component,
        "provider": getattr(e.backend, "provider", None), "batch_size": row.batch_size,
        "text_tokens": row.variant or "real", "status": row.status,
        "model_mb": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "items_per_s": None, "reps": 0,
        "speedup_vs_torch": None, "max_abs_diff": None, "cosine": None, "top1_agreement": None,
        "gflop_per_item": None, "gflops": None, "roofline_pct": None, "h2d_ms": None, "stages_ms": None,
        "non_encoder_share": None, "cold_start_s": None,
        "validated": (bundle.manifest.get("validated") or {}).get(e.precision) if e.name != "torch" else None,
    }
    if e.backend is not None:
        files = graph_files(bundle, e.name, e.precision, component)
        size = (torch_model_mb(e.backend, component) if e.name == "torch"
                else sum(f.stat().st_size for f in files if f.is_file()) / 1e6)
        out["model_mb"] = None if size is None else round(size, 3)
    if row.status != "ok" or not row.latencies:
        return out
    total = float(sum(row.latencies))
    out.update(p50_ms=_ms(row.latencies, 50), p90_ms=_ms(row.latencies, 90), p99_ms=_ms(row.latencies, 99),
               reps=len(row.latencies), items_per_s=round(row.batch_size * len(row.latencies) / total, 4))
    if row.first_run_s is not None and e.load_s is not None:
        out["cold_start_s"] = round(cold + e.load_s + row.first_run_s, 4)
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
    torch_ips = {row.key: res["items_per_s"] for res, row in zip(results, rows, strict=True)
                 if row.engine.choice == "torch" and res["items_per_s"]}
    refs = {r.key: r.outputs for r in rows if reference and r.engine is reference.engine and r.outputs}
    for res, row in zip(results, rows, strict=True):
        if res["items_per_s"] and row.key in torch_ips:
            res["speedup_vs_torch"] = res["items_per_s"] / torch_ips[row.key]
        ref = refs.get(row.key)
        if row.outputs is not None and ref is not None:
            res.update(bench_workloads.compare(row.outputs, ref))


def close_engine(engine: Engine) -> None:
    """Release the predictor's pool and the backend (a backend without close() is fine)."""
    for obj in (engine.predictor, engine.backend):
        with contextlib.suppress(Exception):
            obj.close()  # type: ignore[union-attr]


def run_bench(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns {"header": {...}, "rows": [...]} (rows in backend x batch order)."""
    opts.check()
    say = progress or (lambda _msg: None)
    threads = opts.threads or cpu_count()
    start = time.perf_counter()
    bundle = Bundle.load(opts.bundle)
    cold = time.perf_counter() - start
    say("measuring the machine (fp32 GEMM roofline)")
    header = machine_header(threads, opts.measure_gemm, opts.gemm_seconds)
    header["gemm_gflops_peak"] = header["gemm_gflops"]  # best single matmul, measured before the rows
    with tempfile.TemporaryDirectory(prefix="crisis-bench-") as tmp:
        needed = max(b * _batch_count(b) for b in opts.batch_sizes)
        variants = (None,) if opts.records is not None else tuple(dict.fromkeys(opts.text_tokens))
        inputs: dict[tuple[int | None, int], list[InputBatch]] = {}
        for variant in variants:
            records = _records(opts, Path(tmp), needed, variant)
            say(f"preparing inputs ({len(records)} records, text tokens {variant or 'real'})")
            inputs.update({(variant, b): bench_workloads.prepare_batches(
                bundle, bench_inputs.batches_of(records, b, _batch_count(b)), opts.component)
                for b in opts.batch_sizes})
        engines = []
        for choice in dict.fromkeys(opts.backends):
            say(f"loading {choice}")
            engines.append(load_engine(choice, bundle, opts, threads))
        ok = [e for e in engines if e.status == "ok"]
        if opts.component == "head" and ok:
            for batches in inputs.values():
                bench_workloads.fill_head_inputs(batches, ok[0].backend)  # type: ignore[arg-type]
        flops_note = attach_flops(bundle, opts.component, inputs)
        rows = [Row(e, b, v, status=e.status) for e in engines for v in variants for b in opts.batch_sizes]
        probe = GemmProbe() if opts.measure_gemm else None
        time_rows(rows, inputs, opts, say, probe)
        if probe is not None and probe.calls:  # roofline: the best matmul seen, before or between rounds
            header["gemm_gflops_interleaved_mean"] = round(probe.gflops, 2)  # type: ignore[arg-type]
            header["gemm_gflops"] = round(max(header["gemm_gflops"] or 0.0, probe.best_gflops), 2)  # type: ignore[type-var]
        reference = next((r for r in rows if r.engine.choice == "torch" and r.status == "ok"), None) or next(
            (r for r in rows if r.engine.choice == "onnxruntime" and r.status == "ok"), None)
        for row in rows:
            if row.status == "ok":
                try:
                    row.outputs = bench_workloads.parity_outputs(
                        opts.component, row.engine.backend, inputs[row.key][0])  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001
                    _fail(row, exc)
        results = [summarise(r, opts.component, header["gemm_gflops"], bundle, cold) for r in rows]
        add_comparisons(results, rows, reference)
        for e in engines:
            close_engine(e)
    header.update(
        bundle=str(opts.bundle), component=opts.component, seconds_per_row=opts.seconds, warmup=opts.warmup,
        inputs=str(opts.records) if opts.records else "generated: JPEGs of varied sizes, texts of " + " and ".join(
            f"{v} tokens" if v else "real tweet token lengths" for v in dict.fromkeys(opts.text_tokens)),
        parity_reference=reference.engine.choice if reference else None, flops_note=flops_note,
        timing="GPU: synchronised after each call" if any(e.sync for e in engines) else "CPU wall clock",
    )
    return {"header": header, "rows": results}


__all__ = ["BACKEND_CHOICES", "DEFAULT_BACKENDS", "BenchOptions", "CrisisToolError", "run_bench"]
