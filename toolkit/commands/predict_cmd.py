"""`crisis-tool predict`: classify tweet-image records with an exported bundle (lean runtime, no torch).

Inputs: a CrisisMMD split TSV (needs --image-root, the folder its `image` column is relative to), a JSONL file
of {"id", "text", "image", "llava_text"?} (relative images resolve against --image-root or the file's folder),
a folder of images (same-stem .txt files give the text) or "-" for JSONL on stdin (answered batch by batch as
it arrives). Output: JSONL, one line per input record in input order ("-" = stdout).
Exit codes: 0 every record classified, 3 some records failed (their lines carry "error"), 2 usage errors,
130 Ctrl-C. A file output is written to a temporary sibling and renamed into place when the run completes (an
existing file is untouched by a failed run); on Ctrl-C the lines answered so far are kept as `<output>.partial`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from crisis_tool.runtime.file_guard import DEFAULT_MAX_IMAGE_BYTES
from crisis_tool.runtime.predictor_options import PredictorOptions

if TYPE_CHECKING:
    from crisis_tool.runtime.predictor import Predictor
    from crisis_tool.runtime.records import Record, RecordError
    from crisis_tool.runtime.triage.queue_writer import ReviewQueueWriter
    from crisis_tool.runtime.writers import JsonlWriter

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
EXIT_SOME_FAILED = 3
DEVICE_HELP = ("Device for backends that take one: openvino CPU, GPU, NPU or AUTO (default CPU); the device "
               "really used is reported. Other backends refuse it (onnxruntime: use --providers).")
EXIT_INTERRUPTED = 130


def parse_providers(value: str | None) -> list[str] | None:
    """"cpu,cuda" or full ONNX Runtime names -> provider list (None keeps the automatic choice)."""
    if not value:
        return None
    names = [p.strip() for p in value.split(",") if p.strip()]
    return [PROVIDER_ALIASES.get(p.lower(), p) for p in names] or None


def _check_bundle_arg(bundle: Path) -> None:
    from crisis_tool.runtime.errors import UsageError
    from crisis_tool.runtime.manifest import MANIFEST_NAME

    if not bundle.exists():
        raise UsageError(f"bundle not found: {bundle}")
    if not (bundle / MANIFEST_NAME).is_file():
        raise UsageError(f"{bundle} is not a bundle (no {MANIFEST_NAME}); make one with `crisis-tool export`")


def _check_output_arg(output: str, input_: str, bundle: Path) -> None:
    """UsageError before any work when --output would overwrite an input, an image or a bundle file."""
    from crisis_tool.runtime.atomic_files import refuse_overwriting_inputs
    from crisis_tool.runtime.errors import UsageError
    from crisis_tool.runtime.records import IMAGE_SUFFIXES

    if output == "-":
        return
    refuse_overwriting_inputs(output, [input_])
    path = Path(output).resolve()
    if path.is_relative_to(bundle.resolve()):
        raise UsageError(f"--output {output} is inside the bundle {bundle}; choose another output path")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"--output {output} is an existing image; refusing to overwrite it with JSONL")


def _report_interrupt(writer: JsonlWriter) -> None:
    """One line for Ctrl-C: where the records answered so far are, if anywhere."""
    from crisis_tool.runtime.interrupts import report_interrupt

    if writer.partial_path is not None:
        report_interrupt(f"interrupted; the {writer.count} records answered so far are in {writer.partial_path} "
                         f"({writer.target} was left as it was)")
    elif writer.is_stream:
        report_interrupt(f"interrupted after {writer.count} records")
    else:
        report_interrupt(f"interrupted; {writer.target} was left as it was")


def register(app: typer.Typer) -> None:
    """Add the `predict` command to `app`."""
    from crisis_tool.runtime.backends import backend_names

    backends = ", ".join(backend_names())  # read when the CLI is built: registered backends included

    @app.command("predict")
    def predict(
        bundle: Path = typer.Option(..., "--bundle", help="Bundle folder written by `crisis-tool export`."),
        input_: str = typer.Option(
            ..., "--input", help="A CrisisMMD .tsv, a .jsonl, a folder of images, or '-' for JSONL on stdin."
        ),
        output: str = typer.Option(..., "--output", help="Output .jsonl, or '-' for stdout."),
        backend: str = typer.Option(PredictorOptions.backend, "--backend", help=f"One of: {backends}. Default "
                                    "auto: the fastest configuration this bundle's gates verified here."),
        precision: str | None = typer.Option(
            None, "--precision", help="fp32, fp16 or int8 (default: the bundle's own precision)."
        ),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Records per batch."),
        image_root: Path | None = typer.Option(
            None, "--image-root", help="Folder image paths are relative to (required for a TSV)."
        ),
        providers: str | None = typer.Option(
            None, "--providers",
            help="ONNX Runtime providers in order, e.g. 'cpu' or 'TensorrtExecutionProvider,cuda,cpu'.",
        ),
        threads: int | None = typer.Option(None, "--threads", min=1, help="Intra-op threads (onnxruntime)."),
        device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
        max_image_bytes: int = typer.Option(
            DEFAULT_MAX_IMAGE_BYTES, "--max-image-bytes", min=1,
            help="Largest image file (encoded bytes) a record may name; larger ones are that record's error.",
        ),
        tasks: str | None = typer.Option(
            None, "--tasks", help="Heads to run, e.g. 'informative,damage' (default: every head of the bundle).",
        ),
        decode: str = typer.Option(
            "exact", "--decode",
            help="exact (full-size decode, as in training) or fast (JPEGs decode at 1/2-1/8 scale, keeping at "
                 "least twice the model's input size, then the same resize).",
        ),
        pubkey: Path | None = typer.Option(
            None, "--pubkey", help="Ed25519 public key (.pub): refuse a bundle not signed by it (`crisis-tool sign`).",
        ),
        review_queue: Path | None = typer.Option(
            None, "--review-queue", help="Also write the review queue (JSONL): least confident first, one post per "
                                         "near-duplicate group, with image, text and group members.",
        ),
        review_budget: int | None = typer.Option(
            None, "--review-budget", min=0, help="At most this many posts in the review queue."),
        llava_file: Path | None = typer.Option(
            None, "--llava-file", help="LLaVA captions by image id (what `crisis-tool caption` writes), for "
                                       "bundles trained on llava or tweet+llava text."),
        groups: bool = typer.Option(True, "--groups/--no-groups",
                                    help="Near-duplicate groups (image pHash, normalised text) on every line."),
    ) -> None:
        """Predict a label for every record; failed records get an "error" line, never a crash."""
        from crisis_tool.runtime.errors import UsageError
        from crisis_tool.runtime.image_decode import ImageLimits, check_decode_mode
        from crisis_tool.runtime.interrupts import prompt_interrupt
        from crisis_tool.runtime.llava_text import read_llava_file, with_llava_text
        from crisis_tool.runtime.records import read_records
        from crisis_tool.runtime.triage.queue_writer import ReviewQueueWriter
        from crisis_tool.runtime.writers import JsonlWriter

        _check_bundle_arg(bundle)
        _check_output_arg(output, input_, bundle)
        if review_queue is not None:
            _check_output_arg(str(review_queue), input_, bundle)
            if output != "-" and Path(output).resolve() == review_queue.resolve():
                raise UsageError("--review-queue must be another file than --output")
        limits = ImageLimits(max_bytes=max_image_bytes)
        check_decode_mode(decode)
        with prompt_interrupt():
            items = read_records(input_, image_root)
            if llava_file is not None:
                items = with_llava_text(items, read_llava_file(llava_file))
            names = parse_providers(providers)
            predictor = PredictorOptions(
                bundle=bundle, backend=backend, precision=precision, providers=tuple(names) if names else None,
                threads=threads, batch_size=batch_size, device=device, max_image_bytes=limits.max_bytes,
                decode=decode, pubkey=pubkey, tasks=tasks, groups=groups,
            ).load()
            choice = getattr(predictor.backend, "choice", None)
            if choice is not None:  # --backend auto: what it chose and why, in one line
                typer.echo(choice.line(), err=True)
            start = time.perf_counter()
            writer = JsonlWriter(output, keep_partial=True, one_head=len(predictor.spec.heads) == 1)
            queue = ReviewQueueWriter(review_queue, budget=review_budget) if review_queue is not None else None
            try:
                with predictor, writer:
                    _write_all(predictor, items, writer, flush_each=writer.is_stream, queue=queue)
            except KeyboardInterrupt:
                _report_interrupt(writer)
                raise typer.Exit(EXIT_INTERRUPTED) from None
        elapsed = time.perf_counter() - start
        engine = predictor.backend
        rate = writer.count / max(elapsed, 1e-9)
        typer.echo(
            f"{writer.count} records, {writer.errors} errors, {rate:.1f} records/s; "
            f"backend {engine.name} ({engine.precision}) on {engine.provider}; "
            f"cold start {predictor.cold_start_s or 0.0:.2f}s -> {output}",
            err=True,
        )
        if queue is not None:
            typer.echo(f"review queue: {queue.write()} posts, least confident first -> {review_queue}; next: "
                       f"crisis-tool review --queue {review_queue} --bundle {bundle} --labels corrections.jsonl",
                       err=True)
        elif output != "-":
            typer.echo(f"next: crisis-tool predict ... --review-queue queue.jsonl to pick the posts a person should "
                       f"check; crisis-tool bench --bundle {bundle} for speed", err=True)
        if writer.errors:
            raise typer.Exit(EXIT_SOME_FAILED)


def _write_all(
    predictor: Predictor, items: Iterable[Record | RecordError], writer: JsonlWriter, flush_each: bool,
    queue: ReviewQueueWriter | None = None,
) -> None:
    """Stream predictions into `writer` (and the review queue) with a progress counter on a TTY."""
    from collections import deque

    from crisis_tool.runtime.writers import prediction_to_dict

    pending: deque[Record | RecordError] = deque()  # the records in flight, to pair each answer with its record

    def remembered() -> Iterable[Record | RecordError]:
        for item in items:
            pending.append(item)
            yield item

    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("predicting"), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not sys.stderr.isatty(), transient=True,
    ) as progress:
        task = progress.add_task("predict", total=None)
        for n, pred in enumerate(predictor.predict_stream(remembered()), start=1):
            record = pending.popleft()
            writer.write(pred)
            if queue is not None:
                queue.add(prediction_to_dict(pred, writer.one_head), record)
            if flush_each or n % predictor.batch_size == 0:
                writer.flush()
            progress.advance(task)
