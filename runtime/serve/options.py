"""Options of `serve` and `label`, declared once: the Typer commands read their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.file_guard import DEFAULT_MAX_IMAGE_BYTES

if TYPE_CHECKING:
    from crisis_tool.runtime.predictor import Predictor

LOOPBACK = "127.0.0.1"
OUTPUT_FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class PredictorOptions:
    """How each replica or actor loads its Predictor: the same choices as `crisis-tool predict`."""

    bundle: Path = Path("bundle")
    backend: str = "onnxruntime"
    precision: str | None = None
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    max_batch: int = 32
    device: str | None = None  # for backends that take one (openvino); others refuse it
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # a larger image is that record's error
    decode: str = "exact"  # or "fast" (see image_decode)

    def load(self) -> Predictor:
        from crisis_tool.runtime.image_decode import ImageLimits
        from crisis_tool.runtime.predictor import Predictor

        return Predictor.from_bundle(
            self.bundle, backend=self.backend, max_batch=self.max_batch, precision=self.precision,
            providers=list(self.providers) if self.providers else None, threads=self.threads,
            backend_options={"device": self.device}, image_limits=ImageLimits(max_bytes=self.max_image_bytes),
            decode=self.decode,
        )

    def validate(self) -> None:
        """UsageError for a bad --decode or --max-image-bytes (checked without loading anything)."""
        from crisis_tool.runtime.image_decode import ImageLimits, check_decode_mode

        check_decode_mode(self.decode)
        ImageLimits(max_bytes=self.max_image_bytes)

    def check(self) -> None:
        """Load and close the Predictor here, so a bad bundle, backend, precision or device is one line before
        Ray starts."""
        self.validate()
        self.load().close()


@dataclass(frozen=True)
class ServeOptions:
    """`crisis-tool serve`: where to listen, how to batch, how many replicas, what a request may hold."""

    host: str = LOOPBACK
    port: int = 8000
    address: str | None = None  # join this Ray cluster instead of starting a local one
    replicas: int = 1
    min_replicas: int | None = None  # both bounds set: autoscaling instead of a fixed count
    max_replicas: int | None = None
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch: int = 16
    batch_wait_ms: float = 10.0
    max_ongoing_requests: int = 64  # per replica; at least max_batch or batches cannot fill
    max_body_bytes: int = 16 * 1024 * 1024
    max_records: int = 256  # records in one request
    app_name: str = "crisis-tool"

    def validate(self) -> None:
        """UsageError for inconsistent values (Typer checks the single-value bounds)."""
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise UsageError("--min-replicas and --max-replicas go together (autoscaling bounds)")
        if self.min_replicas is not None and self.max_replicas is not None and not (
            0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1
        ):
            raise UsageError("autoscaling bounds need 0 <= --min-replicas <= --max-replicas, max at least 1")
        if self.max_ongoing_requests < self.max_batch:
            raise UsageError("--max-ongoing-requests must be at least --max-batch, or batches cannot fill")


@dataclass(frozen=True)
class LabelOptions:
    """`crisis-tool label`: which files, where results go, and the size of the actor pool."""

    inputs: tuple[str, ...] = ()
    output: Path = Path("labels")
    image_root: Path | None = None
    output_format: str = "jsonl"
    address: str | None = None
    concurrency: int = 1  # Predictor actors
    batch_size: int = 64  # records per actor call
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    def validate(self) -> None:
        if not self.inputs:
            raise UsageError("label needs at least one --input")
        if self.output_format not in OUTPUT_FORMATS:
            raise UsageError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {self.output_format!r}")
