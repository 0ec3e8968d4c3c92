"""`crisis-tool bench`: latency and throughput of one bundle on several backends, side by side.

One row per backend variant x batch size (x text-length set, when `text_tokens` lists several). Method:
each row is warmed up, then repetitions run round by round (one repetition of every row per round, rows
interleaved, plus one GEMM probe per round) until the time budget is spent, so drift on a noisy
machine hits all rows alike. PyTorch eager (the "torch" backend, where installed) is the reference row:
speedup = items/s ratio, parity = max |diff|, min cosine and top-1 agreement on the same inputs. A backend or
precision that cannot run here is a row with status "unavailable: reason". Every backend, torch included,
comes through the registry and is driven only through the `Backend` interface.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crisis_tool.runtime.backends import backend_class, backend_variants, create_backend
from crisis_tool.runtime.bench import inputs as bench_inputs
from crisis_tool.runtime.bench.machine_info import GemmProbe, cpu_count, machine_header
from crisis_tool.runtime.bench.options import BenchOptions
from crisis_tool.runtime.bench.rows import BackendUnderTest, Row, add_comparisons, summarise
from crisis_tool.runtime.bench.workloads import (
    InputBatch,
    call_once,
    fill_head_inputs,
    parity_outputs,
    prepare_batches,
)
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import MissingDependencyError
from crisis_tool.runtime.predictor import Predictor
from crisis_tool.runtime.records import Record

MIN_REPS = 3
Inputs = dict[tuple[int | None, int], list[InputBatch]]


def load_subject(variant: str, bundle: Bundle, opts: BenchOptions, threads: int) -> BackendUnderTest:
    """Create the backend (and a cache-free Predictor for e2e); a failure becomes the subject's status."""
    name, precision = backend_variants()[variant]
    subject = BackendUnderTest(variant, name, precision)
    try:
        cls = backend_class(name)
        reason = cls.unavailable_reason() or cls.bundle_unavailable_reason(bundle, precision)
    except MissingDependencyError as exc:
        reason = str(exc)
    if reason:
        subject.status = f"unavailable: {reason}"
        return subject
    start = time.perf_counter()
    try:
        subject.backend = create_backend(name, bundle, precision=precision, threads=threads)
        if opts.workload == "e2e":
            subject.predictor = Predictor(bundle, subject.backend, max_batch=max(opts.batch_sizes), cache_size=0)
    except MissingDependencyError as exc:
        subject.status = f"unavailable: {exc}"
        return subject
    except Exception as exc:  # noqa: BLE001 - a broken backend is a row status, not a crash
        subject.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return subject
    subject.load_s = time.perf_counter() - start
    return subject


def _records(opts: BenchOptions, tmp: Path, needed: int, text_tokens: int | None) -> list[Record]:
    if opts.records is not None:
        return bench_inputs.load_records(opts.records, opts.image_root)
    return bench_inputs.generate_records(needed, tmp / "images", opts.seed, text_tokens)


def _batch_count(batch_size: int) -> int:
    return max(2, min(4, -(-64 // batch_size)))


def attach_flops(bundle: Bundle, workload: str, inputs: Inputs) -> str | None:
    """Per-batch encoder FLOPs from the fp32 graphs; returns None, or why FLOPs are unknown ("n/a")."""
    if workload == "head":
        return "head FLOPs are negligible"
    try:
        from crisis_tool.runtime.bench import flops
    except ImportError:
        return "n/a: the onnx package is not installed (FLOP counting needs it)"
    try:
        dims = bundle.dims
        image_item = float(flops.count_flops(bundle.graph_path("image_encoder", "fp32"),
                                             {"B": 1, "H": dims["H"], "W": dims["W"]}))
        text_path, per_width = bundle.graph_path("text_encoder", "fp32"), {}
        for batches in inputs.values():
            for b in batches:
                if workload in ("e2e", "image"):
                    b.flops["image_encoder"] = image_item * b.size
                if workload in ("e2e", "text"):
                    width = int(b.ids.shape[1])
                    if width not in per_width:
                        per_width[width] = float(flops.count_flops(text_path, {"B": 1, "L": width}))
                    b.flops["text_encoder"] = per_width[width] * b.size
    except Exception as exc:  # noqa: BLE001 - FLOPs are informative only
        return f"n/a: {exc}"
    return None


def _run_row(row: Row, workload: str, batch: InputBatch) -> None:
    backend = row.subject.backend
    if backend is None:
        raise RuntimeError("row has no backend")
    before = backend.h2d_seconds
    elapsed, stages = call_once(workload, backend, row.subject.predictor, batch)
    after = backend.h2d_seconds
    row.latencies.append(elapsed)
    row.flops.append(sum(batch.flops.values()))
    for key, value in stages.items():
        row.stages.setdefault(key, []).append(value)
    if before is not None and after is not None:
        row.transfer.append(after - before)


def time_rows(rows: list[Row], inputs: Inputs, opts: BenchOptions,
              progress: Callable[[str], None] | None = None, probe: Callable[[], None] | None = None) -> None:
    """Warm up every row, then interleave one repetition per row per round until the budget is spent.

    `probe` (the GEMM roofline) runs once per round too, so it sees the same machine drift as the rows.
    """
    live = [r for r in rows if r.status == "ok"]
    for row in live:
        for i in range(max(1, opts.warmup)):
            try:
                start = time.perf_counter()
                _run_row(row, opts.workload, inputs[row.key][i % len(inputs[row.key])])
                if i == 0:
                    row.first_run_s = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001
                row.fail(exc)
                break
        row.clear_samples()
    live = [r for r in live if r.status == "ok"]
    budget = opts.seconds * len(live)
    start, rnd = time.perf_counter(), 0
    while live and (rnd < MIN_REPS or time.perf_counter() - start < budget):
        for row in live:
            batches = inputs[row.key]
            try:
                _run_row(row, opts.workload, batches[rnd % len(batches)])
            except Exception as exc:  # noqa: BLE001
                row.fail(exc)
        live = [r for r in live if r.status == "ok"]
        if probe is not None:
            probe()
        rnd += 1
        if progress and rnd % 5 == 0:
            progress(f"round {rnd}, {time.perf_counter() - start:.1f}/{budget:.1f} s")


def _prepare_inputs(opts: BenchOptions, bundle: Bundle, tmp: Path, say: Callable[[str], None]
                    ) -> tuple[tuple[int | None, ...], Inputs]:
    needed = max(b * _batch_count(b) for b in opts.batch_sizes)
    text_sets = (None,) if opts.records is not None else tuple(dict.fromkeys(opts.text_tokens))
    inputs: Inputs = {}
    for tokens in text_sets:
        records = _records(opts, tmp, needed, tokens)
        say(f"preparing inputs ({len(records)} records, text tokens {tokens or 'real'})")
        for b in opts.batch_sizes:
            batches = bench_inputs.batches_of(records, b, _batch_count(b))
            inputs[(tokens, b)] = prepare_batches(bundle, batches, opts.workload)
    return text_sets, inputs


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
    subjects: list[BackendUnderTest] = []
    try:
        with tempfile.TemporaryDirectory(prefix="crisis-bench-") as tmp:
            text_sets, inputs = _prepare_inputs(opts, bundle, Path(tmp), say)
            for variant in dict.fromkeys(opts.backends):
                say(f"loading {variant}")
                subjects.append(load_subject(variant, bundle, opts, threads))
            ok = [s.backend for s in subjects if s.backend is not None]
            if opts.workload == "head" and ok:
                for batches in inputs.values():
                    fill_head_inputs(batches, ok[0])
            flops_note = attach_flops(bundle, opts.workload, inputs)
            rows = [Row(s, b, t, status=s.status) for s in subjects for t in text_sets for b in opts.batch_sizes]
            probe = GemmProbe() if opts.measure_gemm else None
            time_rows(rows, inputs, opts, say, probe)
            if probe is not None and probe.calls:  # roofline: the best matmul seen, before or between rounds
                header["gemm_gflops_interleaved_mean"] = round(probe.gflops or 0.0, 2)
                header["gemm_gflops"] = round(max(header["gemm_gflops"] or 0.0, probe.best_gflops or 0.0), 2)
            reference = next((r for r in rows if r.subject.variant == "torch" and r.status == "ok"), None) or next(
                (r for r in rows if r.subject.variant == "onnxruntime" and r.status == "ok"), None)
            for row in rows:
                if row.status == "ok" and row.subject.backend is not None:
                    try:
                        row.outputs = parity_outputs(opts.workload, row.subject.backend, inputs[row.key][0])
                    except Exception as exc:  # noqa: BLE001
                        row.fail(exc)
            results = [summarise(r, opts.workload, header["gemm_gflops"], bundle, cold) for r in rows]
            add_comparisons(results, rows, reference)
    finally:
        for subject in subjects:
            subject.close()
    header.update(
        bundle=str(opts.bundle), workload=opts.workload, seconds_per_row=opts.seconds, warmup=opts.warmup,
        inputs=str(opts.records) if opts.records else "generated: JPEGs of varied sizes, texts of " + " and ".join(
            f"{t} tokens" if t else "real tweet token lengths" for t in dict.fromkeys(opts.text_tokens)),
        parity_reference=reference.subject.variant if reference else None, flops_note=flops_note,
        timing="wall clock; each call ends with the backend's synchronize() (GPU work included)",
    )
    return {"header": header, "rows": results}
