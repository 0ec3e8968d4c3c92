"""`crisis-tool bench`: latency and throughput of one bundle on several backends, side by side.

One row per backend variant x decode mode x batch size (x text-length set, when `text_tokens` lists several).
Method: each row is warmed up, then repetitions run round by round (one repetition of every row per round, rows
interleaved, plus one MatMul peak probe per engine per round) until the time budget is spent, so drift on a noisy
machine hits all rows alike. PyTorch eager (the "torch" backend, where installed) is the reference row:
speedup = items/s ratio, parity = max |diff|, min cosine and top-1 agreement on the same inputs. A backend or
precision that cannot run here is a row with status "unavailable: reason". Every backend, torch included,
comes through the registry and is driven only through the `Backend` interface. With labelled records, every ok
row then classifies all of them once, untimed (task metrics, `task_metrics`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from crisis_tool.runtime.backends import backend_class, backend_variants, create_backend
from crisis_tool.runtime.bench import inputs as bench_inputs
from crisis_tool.runtime.bench.decode_modes import decode_cosines, decode_speed, distinct_images
from crisis_tool.runtime.bench.engine_peak import EnginePeaks
from crisis_tool.runtime.bench.labelled_records import LabelledSet, read_labelled, timing_records
from crisis_tool.runtime.bench.machine_info import cpu_count, machine_header
from crisis_tool.runtime.bench.options import BenchOptions
from crisis_tool.runtime.bench.rows import BackendUnderTest, Row, add_comparisons, summarise
from crisis_tool.runtime.bench.task_metrics import attach_task_metrics
from crisis_tool.runtime.bench.workloads import (
    InputBatch,
    call_once,
    fill_head_inputs,
    parity_outputs,
    prepare_batches,
)
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import MissingDependencyError, UsageError
from crisis_tool.runtime.llava_text import read_llava_file, with_llava_text
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
        options = {"device": opts.device} if opts.device and cls.takes_option("device") else {}
        # `auto` picks its own precision (the fastest verified configuration), like predict's default
        chosen = None if name == "auto" else precision
        subject.backend = create_backend(name, bundle, precision=chosen, threads=threads, **options)
        subject.precision = subject.backend.precision
        if opts.workload == "e2e":
            subject.predictor = Predictor(bundle, subject.backend, batch_size=max(opts.batch_sizes), cache_size=0)
    except MissingDependencyError as exc:
        subject.status = f"unavailable: {exc}"
        return subject
    except UsageError:  # e.g. an unknown --device: the user's mistake, not the backend's
        raise
    except Exception as exc:  # noqa: BLE001 - a broken backend is a row status, not a crash
        subject.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return subject
    subject.load_s = time.perf_counter() - start
    return subject


def _records(opts: BenchOptions, tmp: Path, needed: int, text_tokens: int | None,
             labelled: LabelledSet | None = None) -> list[Record]:
    if labelled is not None:  # the labelled set is the workload: its records that predict cleanly
        records = timing_records(labelled, needed)
        if not records:
            raise UsageError(f"--records {opts.records}: no record has a readable image and a text")
        return records
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
    if row.subject.predictor is not None:
        row.subject.predictor.decode_mode = row.decode
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


def _prepare_inputs(opts: BenchOptions, bundle: Bundle, tmp: Path, say: Callable[[str], None],
                    labelled: LabelledSet | None = None) -> tuple[tuple[int | None, ...], Inputs]:
    needed = max(b * _batch_count(b) for b in opts.batch_sizes)
    text_sets = (None,) if opts.records is not None else tuple(dict.fromkeys(opts.text_tokens))
    inputs: Inputs = {}
    for tokens in text_sets:
        records = _records(opts, tmp, needed, tokens, labelled)
        say(f"preparing inputs ({len(records)} records, text tokens {tokens or 'real'})")
        for b in opts.batch_sizes:
            batches = bench_inputs.batches_of(records, b, _batch_count(b))
            inputs[(tokens, b)] = prepare_batches(bundle, batches, opts.workload)
    return text_sets, inputs


def text_recipe_note(bundle: Bundle, sets: list[LabelledSet]) -> str | None:
    """Why the task metrics are not the trained model's when a llava bundle meets records without captions."""
    if bundle.text_source == "tweet":
        return None
    records = [r for s in sets for r in s.records]
    missing = sum(1 for r in records if not r.llava_text)
    if not missing:
        return None
    return (f"text recipe differs: the bundle was trained on {bundle.text_source!r} text but {missing} of "
            f"{len(records)} labelled records have no llava_text (pass --llava-file); they were scored on the "
            "tweet alone")


def attach_invariance(results: list[dict[str, Any]], rows: list[Row], bundle: Bundle) -> None:
    """Every ok row gets its backend's batch invariance (checked once per backend x precision)."""
    from crisis_tool.runtime.batch_invariance import check_batch_invariance, gate_entry, mixed_inputs

    checked: dict[int, dict[str, Any]] = {}
    for res, row in zip(results, rows, strict=True):
        backend = row.subject.backend
        if res.get("status") != "ok" or backend is None:
            continue
        if id(backend) not in checked:
            try:
                report = check_batch_invariance(backend, mixed_inputs(bundle.dims, n=INVARIANCE_RECORDS),
                                                precision=row.subject.precision, batch_size=INVARIANCE_RECORDS)
                checked[id(backend)] = gate_entry(report)
            except Exception as exc:  # noqa: BLE001 - a backend that cannot be checked says why
                checked[id(backend)] = {"batch_invariance_error": f"{type(exc).__name__}: {exc}"[:200]}
        res.update(checked[id(backend)])


INVARIANCE_RECORDS = 32  # mixed records, each alone and all in one batch (bench: once per backend x precision)


def run_bench(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns {"header": {...}, "rows": [...]} (rows in backend x batch order)."""
    opts.check()
    say = progress or (lambda _msg: None)
    threads = opts.threads or cpu_count()
    start = time.perf_counter()
    bundle = Bundle.load(opts.bundle)
    cold = time.perf_counter() - start
    sources = [(opts.records, opts.image_root, opts.label_map, opts.task), *opts.more_labelled] if opts.records \
        else []
    labelled_sets = []
    for records, image_root, label_map, task in sources:
        head = bundle.spec.head(task) if task is not None else bundle.spec.heads[0]  # unknown: one line
        found = read_labelled(records, image_root, head.labels, label_map)
        if found is not None:
            if opts.llava_file is not None:
                found = replace(found, items=list(with_llava_text(found.items, read_llava_file(opts.llava_file))))
            labelled_sets.append(replace(found, task=head.task))
    labelled = labelled_sets[0] if labelled_sets else None
    if opts.max_drop is not None and labelled is None:
        raise UsageError(f"--max-drop: {opts.records} has no 'label' field, so there is no task metric to check")
    header = machine_header(threads, measure_gemm=False)  # the roofline is each engine's own peak (engine_peak)
    decodes = tuple(dict.fromkeys(opts.decode)) if opts.workload == "e2e" else opts.decode[:1]
    subjects: list[BackendUnderTest] = []
    try:
        with tempfile.TemporaryDirectory(prefix="crisis-bench-") as tmp:
            text_sets, inputs = _prepare_inputs(opts, bundle, Path(tmp), say, labelled)
            for variant in dict.fromkeys(opts.backends):
                say(f"loading {variant}")
                subjects.append(load_subject(variant, bundle, opts, threads))
            ok = [s.backend for s in subjects if s.backend is not None]
            if opts.workload == "head" and ok:
                for batches in inputs.values():
                    fill_head_inputs(batches, ok[0])
            flops_note = attach_flops(bundle, opts.workload, inputs)
            rows = [Row(s, b, t, status=s.status, decode=d) for s in subjects for d in decodes for t in text_sets
                    for b in opts.batch_sizes]
            peaks = EnginePeaks([s for s in subjects if s.backend is not None]) if opts.measure_gemm else None
            if peaks is not None:
                say("probing each engine's MatMul peak")
                peaks.warm_up()
            time_rows(rows, inputs, opts, say, peaks)
            reference = next((r for r in rows if r.subject.variant == "torch" and r.status == "ok"), None) or next(
                (r for r in rows if r.subject.variant == "onnxruntime" and r.status == "ok"), None)
            for row in rows:
                if row.status == "ok" and row.subject.backend is not None:
                    try:
                        row.outputs = parity_outputs(opts.workload, row.subject.backend, inputs[row.key][0])
                    except Exception as exc:  # noqa: BLE001
                        row.fail(exc)
            results = [summarise(r, opts.workload, None, bundle, cold) for r in rows]
            say("batch invariance: each record alone vs in a batch of mixed records")
            attach_invariance(results, rows, bundle)
            add_comparisons(results, rows, reference)
            if peaks is not None:
                header["roofline_warnings"] = peaks.apply(results, rows)
                header["engine_peaks"] = peaks.header()
            if labelled is not None:
                say(f"task metrics on {len(labelled)} labelled records")
                attach_task_metrics(results, rows, labelled_sets, bundle, reference)
                recipe = text_recipe_note(bundle, labelled_sets)
                if recipe:
                    header["text_recipe"] = recipe
                    for res in results:
                        if res.get("accuracy") is not None:
                            res["text_recipe"] = "differs"
            if "fast" in decodes:
                say("decode: fast against exact on the same images")
                images = distinct_images(r for batches in inputs.values() for b in batches for r in b.records)
                decode_cosines(results, rows, images, bundle)
                header["decode_speed"] = decode_speed(images, bundle)
    finally:
        for subject in subjects:
            subject.close()
    header.update(
        bundle=str(opts.bundle), workload=opts.workload, seconds_per_row=opts.seconds, warmup=opts.warmup,
        inputs=str(opts.records) if opts.records else "generated: JPEGs of varied sizes, texts of " + " and ".join(
            f"{t} tokens" if t else "real tweet token lengths" for t in dict.fromkeys(opts.text_tokens)),
        parity_reference=reference.subject.variant if reference else None, flops_note=flops_note,
        metric_reference=reference.subject.variant if reference and labelled is not None else None,
        labelled=None if labelled is None else {"source": labelled.source, "records": len(labelled),
                                                "task": labelled.task,
                                                "tasks": {s.task: s.source for s in labelled_sets}},
        timing="wall clock; each call ends with the backend's synchronize() (GPU work included)",
    )
    return {"header": header, "rows": results}
