"""`crisis-tool label`: batch inference over files with Ray Data, resumable record by record.

Pipeline: one Ray Data row per pending input `{file, path, skip}` -> `flat_map` reads its records in a Ray
task (the runtime readers, so bad lines and unreadable Parquet parts become error rows), numbers them (`seq`)
and ends each file with an `end` row -> `map_batches` runs the Predictor in an actor pool (`concurrency`
actors, `batch_size` records per call) -> the driver appends each answer to its input's partial output in
`seq` order, whatever order rows arrive in: a row that comes early waits, a row that comes twice (Ray redid
its work) is written once, and a file is answered once its `end` row and every record before it are
written. When every file is answered, one second pass (`label_groups`) gives near-duplicate groups across all
files of the run and renames the outputs into place. So every input record gets exactly one output line.
Ctrl-C or a failure keeps the partials, and a rerun resumes after the last answer written. When part of the
cluster is lost (a node dies) the run resumes by itself, up to `CLUSTER_RETRIES` times.
Image paths must be readable from every node (shared storage) when the job runs on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from crisis_tool.runtime.atomic_files import check_writable_dir, refuse_overwriting_inputs
from crisis_tool.runtime.errors import caused_by
from crisis_tool.runtime.interrupts import report_interrupt
from crisis_tool.runtime.llava_text import with_llava_text
from crisis_tool.runtime.serve.cluster import ray_session, require_ray, set_library_log_level
from crisis_tool.runtime.serve.label_groups import TRIAGE_KEY, RunFile, group_run, triage_keys
from crisis_tool.runtime.serve.label_inputs import (
    check_readable,
    count_records,
    discover_inputs,
    output_paths,
    record_rows,
    row_items,
)
from crisis_tool.runtime.serve.label_output import PartialOutput, clean_stale, resume_point
from crisis_tool.runtime.serve.options import LabelOptions, PredictorOptions
from crisis_tool.runtime.triage.queue_writer import ReviewQueueWriter
from crisis_tool.runtime.writers import prediction_to_dict

CLUSTER_RETRIES = 3
BLOCK_BYTES = 64 * 1024  # about 200 records per Ray Data block
Advance = Callable[[int], None]
ProgressFactory = Callable[[str, int], contextlib.AbstractContextManager[Advance]]


@dataclass
class LabelSummary:
    """What a run did: outputs written, skipped (complete before) and resumed; rows, error rows, seconds;
    answers per Ray node id; how often it resumed after losing part of the cluster; the review queue's size."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    resumed: list[Path] = field(default_factory=list)
    rows: int = 0
    errors: int = 0
    seconds: float = 0.0
    nodes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    queued: int | None = None  # posts in the review queue (None: none asked for)


class Row(NamedTuple):
    """One answer from the pipeline: record `seq` of input `file` (or that file's `end` row, seq = count)."""

    file: int
    seq: int
    end: bool
    result: str
    failed: bool
    node: str


class PredictionActor:
    """A Ray Data actor: loads the Predictor once, then classifies one batch of record rows per call."""

    def __init__(self, options: PredictorOptions, keep_post: bool = False) -> None:
        import ray

        self.keep_post = keep_post  # the post's image path and text go with its keys (for the review queue)
        self.predictor = options.load()
        self.llava = options.llava_texts()  # captions for records that carry none (--llava-file)
        spec = getattr(self.predictor, "spec", None)
        self.one_head = None if spec is None else len(spec.heads) == 1
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        n = len(batch["file"])
        records = [k for k in range(n) if not batch["end"][k]]
        results, failed = np.full(n, "", dtype=object), np.zeros(n, dtype=bool)
        items = row_items(batch, records)
        if self.llava:
            items = list(with_llava_text(items, self.llava))
        for k, item, p in zip(records, items, self.predictor.predict(items), strict=True):
            line = prediction_to_dict(p, self.one_head)
            if p.error is None:
                image = getattr(item, "image", None)
                line[TRIAGE_KEY] = triage_keys(p.image_hash, getattr(item, "text", None), self.keep_post,
                                               image if isinstance(image, str) else None)
            results[k] = json.dumps(line, ensure_ascii=False)
            failed[k] = p.error is not None
        return {"file": batch["file"], "seq": batch["seq"], "end": batch["end"], "result": results,
                "failed": failed, "node": np.full(n, self.node, dtype=object)}


def predicted_rows(
    inputs: Sequence[tuple[int, Path, int]], predictor_options: PredictorOptions, options: LabelOptions,
    verbose: bool = False,
) -> Iterator[Row]:
    """Rows for (file index, path, records to skip) `inputs`, computed by Ray Data in whatever order they finish."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = False  # the writer restores the order: no head-of-line wait
    context.enable_progress_bars = False
    context.target_max_block_size = BLOCK_BYTES  # small blocks: answers stream back (progress, resumable partials)
    set_library_log_level(verbose)  # Ray Data sets INFO when it is first used
    files = ray.data.from_items([{"file": i, "path": str(p), "skip": skip} for i, p, skip in inputs],
                                override_num_blocks=len(inputs))
    rows = files.flat_map(partial(record_rows, image_root=str(options.image_root) if options.image_root else None))
    results = rows.map_batches(
        PredictionActor,
        fn_constructor_kwargs={"options": replace(predictor_options, batch_size=options.batch_size),
                               "keep_post": options.review_queue is not None},
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.concurrency),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        columns = [batch[key] for key in Row._fields]
        for file, seq, end, result, failed, node in zip(*columns, strict=True):
            yield Row(int(file), int(seq), bool(end), str(result), bool(failed), str(node))


class FileInOrder:
    """One input's answers put back in record order into its `PartialOutput`."""

    def __init__(self, output: PartialOutput, done: int) -> None:
        self.output, self.next = output, done
        self.waiting: dict[int, Row] = {}
        self.end: int | None = None
        self.finished = False

    def take(self, row: Row) -> list[Row]:
        """Accept `row`; return the rows written now, in order (a repeated or already written row is ignored)."""
        if row.end:
            self.end = row.seq
        elif row.seq >= self.next:
            self.waiting.setdefault(row.seq, row)
        written = []
        while self.next in self.waiting:
            ready = self.waiting.pop(self.next)
            self.output.add(ready.result)
            written.append(ready)
            self.next += 1
        return written

    @property
    def complete(self) -> bool:
        return self.end is not None and self.next >= self.end


def write_rows(rows: Iterator[Row], files: dict[int, FileInOrder], summary: LabelSummary, advance: Advance) -> None:
    """Stream rows into their files; finish each file when complete; RuntimeError if rows end before all are."""
    for row in rows:
        state = files.get(row.file)
        if state is None:
            raise RuntimeError(f"a row of file {row.file} arrived, which this run does not label")
        if state.finished:
            continue  # a repeat of work already written
        written = state.take(row)
        summary.rows += len(written)
        summary.errors += sum(r.failed for r in written)
        summary.nodes.update(r.node for r in written)
        advance(len(written))
        if state.complete:
            state.output.seal()
            state.finished = True
    missing = [state.output.out.name for state in files.values() if not state.finished]
    if missing:
        raise RuntimeError(f"the pipeline ended before every record of {', '.join(missing)} was answered")


def run_label(
    predictor_options: PredictorOptions, options: LabelOptions, progress: ProgressFactory | None = None,
    verbose: bool = False,
) -> LabelSummary:
    """Label every input whose output does not exist yet, resuming partial outputs; see the module docstring."""
    options.validate()
    start = time.perf_counter()
    inputs = discover_inputs(options.inputs)
    folder = check_writable_dir(options.output)
    outputs = output_paths(inputs, folder, options.output_format)
    if options.review_queue is not None:
        refuse_overwriting_inputs(options.review_queue, [*inputs, *outputs], "--review-queue")
    clean_stale(outputs)
    summary = LabelSummary(skipped=[out for out in outputs if out.exists()])
    pending = [i for i, out in enumerate(outputs) if not out.exists()]
    for i in pending:
        check_readable(inputs[i], options.image_root)
    if pending:
        require_ray("label")
        predictor_options.validate()
        if not options.address:  # on a cluster the bundle only needs to exist where the actors run
            predictor_options.check()
        done = {i: resume_point(inputs[i], outputs[i]) for i in pending}
        summary.resumed = [outputs[i] for i in pending if done[i]]
        total = sum(max(count_records(inputs[i]) - done[i], 0) for i in pending)
        bar = progress("labelling records", total) if progress else contextlib.nullcontext(lambda n: None)
        try:
            with ray_session(options.address, verbose=verbose), bar as advance:
                _label_pending(pending, inputs, outputs, predictor_options, options, summary, advance, verbose)
            queue = (ReviewQueueWriter(options.review_queue, budget=options.review_budget)
                     if options.review_queue is not None else None)
            run_files = [RunFile(outputs[i], options.output_format) for i in pending]
            summary.written += group_run(run_files, predictor_options.groups, queue)
            summary.queued = queue.write() if queue is not None else None
        except KeyboardInterrupt:
            report_interrupt(f"interrupted; {summary.rows} answers of this run are kept in {folder}/*.partial: "
                             "run the same command again to resume")
            raise
    summary.seconds = time.perf_counter() - start
    return summary


def _label_pending(
    pending: list[int], inputs: list[Path], outputs: list[Path], predictor_options: PredictorOptions,
    options: LabelOptions, summary: LabelSummary, advance: Advance, verbose: bool,
) -> None:
    """Label the `pending` inputs, resuming from the partials again when the cluster loses a node."""
    for attempt in range(CLUSTER_RETRIES + 1):
        todo = [i for i in pending if not outputs[i].exists()]
        if not todo:
            return
        files: dict[int, FileInOrder] = {}
        try:
            for i in todo:
                done = resume_point(inputs[i], outputs[i])
                files[i] = FileInOrder(PartialOutput(inputs[i], outputs[i], options.output_format, done), done)
            work = [(i, inputs[i], files[i].next) for i in todo]
            write_rows(predicted_rows(work, predictor_options, options, verbose), files, summary, advance)
            return
        except Exception as exc:
            if attempt == CLUSTER_RETRIES or not cluster_lost(exc):
                raise
            summary.retries += 1
            print(f"warning: label lost part of the Ray cluster ({type(exc).__name__}); resuming "
                  f"{sum(not f.finished for f in files.values())} unfinished files", file=sys.stderr, flush=True)
        finally:
            for state in files.values():
                state.output.keep()


def cluster_lost(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says a Ray node, worker, actor or object was lost."""
    import ray.exceptions as rex
    from ray.data.exceptions import SystemException

    lost = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError, rex.RaySystemError,
            SystemException)
    return caused_by(exc, lost)
