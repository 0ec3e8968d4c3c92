"""How a Predictor is loaded, declared once for `predict`, `serve` and `label` (and read by their Typer options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crisis_tool.runtime.file_guard import DEFAULT_MAX_IMAGE_BYTES

if TYPE_CHECKING:
    from crisis_tool.runtime.predictor import Predictor


@dataclass(frozen=True)
class PredictorOptions:
    """How a Predictor is loaded: the choices of `predict`, `serve` (each replica) and `label` (each actor),
    declared once; the commands read their defaults here."""

    bundle: Path = Path("bundle")
    backend: str = "auto"  # the fastest configuration this bundle's gates verified on this machine
    precision: str | None = None
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    batch_size: int = 32  # records per Predictor batch
    device: str | None = None  # for backends that take one (openvino); others refuse it
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # a larger image is that record's error
    decode: str = "exact"  # or "fast" (see image_decode)
    pubkey: Path | None = None  # Ed25519 public key: the bundle must be signed by it (runtime.signing)
    tasks: str | None = None  # heads to run ("informative,damage"); None: every head
    groups: bool = True  # near-duplicate groups on every answer
    llava_file: Path | None = None  # LLaVA captions by image id (`crisis-tool caption`), for llava bundles

    def load(self) -> Predictor:
        from crisis_tool.runtime.image_decode import ImageLimits
        from crisis_tool.runtime.predictor import Predictor

        return Predictor.from_bundle(
            self.bundle, backend=self.backend, batch_size=self.batch_size, precision=self.precision,
            providers=list(self.providers) if self.providers else None, threads=self.threads,
            backend_options={"device": self.device}, image_limits=ImageLimits(max_bytes=self.max_image_bytes),
            decode=self.decode, pubkey=self.pubkey, tasks=self.tasks, groups=self.groups,
        )

    def llava_texts(self) -> dict[str, str] | None:
        """The captions of `llava_file` by record id (None without one); DataError naming the file if unusable."""
        if self.llava_file is None:
            return None
        from crisis_tool.runtime.llava_text import read_llava_file

        return read_llava_file(self.llava_file)

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
