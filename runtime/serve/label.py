"""`crisis-tool label`: batch inference over files with Ray Data, resumable at file granularity.

Pipeline: one Ray Data row per pending input file -> `flat_map` reads its records in a Ray task (the runtime
readers, so bad lines become error rows) -> `map_batches` runs the Predictor in an actor pool (`concurrency`
actors, `batch_size` records per call, CPUs/GPUs per actor) -> rows stream back in input order and each
file's output is written atomically (temporary file, rename) as soon as its last row has arrived. An output
that exists is complete, so a rerun skips its input: an interrupted job redoes only the unfinished files.
Image paths must be readable from every node (shared storage) when the job runs on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

from crisis_tool.runtime.atomic_files import atomic_output, check_writable_dir
from crisis_tool.runtime.serve.cluster import ray_session, require_ray
from crisis_tool.runtime.serve.label_inputs import (
    check_readable,
    discover_inputs,
    output_paths,
    record_rows,
    row_items,
)
from crisis_tool.runtime.serve.options import LabelOptions, PredictorOptions
from crisis_tool.runtime.writers import prediction_to_dict


@dataclass
class LabelSummary:
    """What a run did: outputs written and skipped, rows, error rows, seconds."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    rows: int = 0
    errors: int = 0
    seconds: float = 0.0


class PredictionActor:
    """A Ray Data actor: loads the Predictor once, then classifies one batch of record rows per call."""

    def __init__(self, options: PredictorOptions) -> None:
        self.predictor = options.load()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        predictions = self.predictor.predict(row_items(batch))
        results = [json.dumps(prediction_to_dict(p), ensure_ascii=False) for p in predictions]
        failed = [p.error is not None for p in predictions]
        return {"file": batch["file"], "result": np.array(results, dtype=object), "failed": np.array(failed)}


class OutputFile:
    """One output, written through `atomic_output`: JSONL lines, or Parquet row groups."""

    def __init__(self, path: Path, output_format: str) -> None:
        self.path, self.format = path, output_format
        self.rows = self.errors = 0
        self._stack = contextlib.ExitStack()
        self._fh: IO[Any] = self._stack.enter_context(atomic_output(path, "w" if output_format == "jsonl" else "wb"))
        self._pending: list[dict[str, Any]] = []
        self._parquet: Any = None

    def add(self, result: str, failed: bool) -> None:
        self.rows += 1
        self.errors += failed
        if self.format == "jsonl":
            self._fh.write(result + "\n")
            return
        self._pending.append(json.loads(result))
        if len(self._pending) >= 4096:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.string()), ("label", pa.string()), ("confidence", pa.float64()),
                            ("probs", pa.map_(pa.string(), pa.float64())), ("error", pa.string())])
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._fh, schema)
        rows = [{**row, "probs": list(row["probs"].items())} for row in self._pending]
        self._parquet.write_table(pa.Table.from_pylist(rows, schema=schema))
        self._pending = []

    def close(self, failed: bool = False) -> None:
        """Rename into place (or, when `failed`, remove the temporary file)."""
        try:
            with self._stack:  # atomic_output renames on a clean exit, deletes on an exception
                if failed:
                    raise _Abandon
                if self.format == "parquet":
                    self._flush_parquet()
                    self._parquet.close()
        except _Abandon:
            pass


class _Abandon(Exception):
    pass


def predicted_rows(
    inputs: Sequence[tuple[int, Path]], predictor_options: PredictorOptions, options: LabelOptions
) -> Iterator[tuple[int, str, bool]]:
    """(file index, result JSON, failed) for every record of `inputs`, in input order, computed by Ray Data."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # Ray Data sets INFO when it is first used
    files = ray.data.from_items([{"file": i, "path": str(p)} for i, p in inputs], override_num_blocks=len(inputs))
    rows = files.flat_map(partial(record_rows, image_root=str(options.image_root) if options.image_root else None))
    results = rows.map_batches(
        PredictionActor,
        fn_constructor_kwargs={"options": replace(predictor_options, max_batch=options.batch_size)},
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.concurrency),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        yield from zip((int(i) for i in batch["file"]), batch["result"], batch["failed"], strict=True)


def run_label(predictor_options: PredictorOptions, options: LabelOptions) -> LabelSummary:
    """Label every input file whose output does not exist yet; see the module docstring."""
    options.validate()
    start = time.perf_counter()
    inputs = discover_inputs(options.inputs)
    folder = check_writable_dir(options.output)
    outputs = output_paths(inputs, folder, options.output_format)
    summary = LabelSummary(skipped=[out for out in outputs if out.exists()])
    pending = [(i, path) for i, (path, out) in enumerate(zip(inputs, outputs, strict=True)) if not out.exists()]
    for _, path in pending:
        check_readable(path, options.image_root)
    if pending:
        require_ray("label")
        predictor_options.validate()
        if not options.address:  # on a cluster the bundle only needs to exist where the actors run
            predictor_options.check()
        with ray_session(options.address):
            _write_outputs(predicted_rows(pending, predictor_options, options),
                           [i for i, _ in pending], outputs, options.output_format, summary)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_outputs(
    rows: Iterator[tuple[int, str, bool]], order: list[int], outputs: list[Path], output_format: str,
    summary: LabelSummary,
) -> None:
    """Stream rows into their files; a file is closed (renamed into place) once rows move past it."""
    position = 0
    current: OutputFile | None = None

    def finish_until(index: int | None) -> None:
        nonlocal position, current
        while position < len(order) and (index is None or order[position] != index):
            done = current or OutputFile(outputs[order[position]], output_format)  # a file without records
            done.close()
            summary.written.append(done.path)
            summary.rows += done.rows
            summary.errors += done.errors
            current = None
            position += 1

    try:
        for index, result, failed in rows:
            if current is None or order[position] != index:
                finish_until(index)
                if position >= len(order):
                    raise RuntimeError(f"row of file {index} arrived out of order")
                current = OutputFile(outputs[order[position]], output_format)
            current.add(result, bool(failed))
        finish_until(None)
    except BaseException:
        if current is not None:
            current.close(failed=True)
        raise
