"""Export options and results, declared once: the CLI reads its defaults here (a leaf: imports no export module)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import UsageError

DEFAULT_GATE_RECORDS = 512  # the gates use at least this many records when the data has them
DEFAULT_MAX_BATCH = 64
DEFAULT_OPSET = 17
RUN_DIR, BUNDLE = "run dir", "bundle"
Progress = Callable[[str], None] | None


@dataclass
class ExportOptions:
    """One `crisis-tool export` request; the CLI's defaults are read from here."""

    model: Path | None = None  # run dir (formats that build from a run dir)
    out: Path | None = None  # bundle to write (from a run dir)
    from_bundle: Path | None = None  # existing bundle (formats that build from a bundle)
    format: str = "onnx"
    precision: str | None = None  # None: fp32 from a run dir, the bundle's own precision from a bundle
    max_batch: int | None = None  # None: DEFAULT_MAX_BATCH from a run dir, the bundle's own from a bundle
    opset: int = DEFAULT_OPSET
    force: bool = False
    explain: bool = False  # head graphs also output each post's modality share (image vs text)
    tar: bool = False
    timing_cache: Path | None = None
    calib_data: Path | None = None  # records for calibration and the parity gates (default: generated inputs)
    calib_image_root: Path | None = None  # folder a --calib-data TSV's image paths are relative to
    calib_task: str | None = None  # with --calib-split: --calib-data is a CrisisMMD root
    calib_split: str | None = None
    calib_splits: str = "settingA"  # split set under a CrisisMMD root
    calib_n: int = DEFAULT_GATE_RECORDS  # records used (at most) for calibration and the gates

    @property
    def bundle_dir(self) -> Path:
        """The bundle a bundle-built format works on: --from-bundle, or the bundle just written to --out."""
        path = self.from_bundle or self.out
        if path is None:
            raise UsageError("export needs --out BUNDLE_DIR or --from-bundle BUNDLE_DIR")
        return Path(path)


@dataclass
class ExportResult:
    out: Path
    manifest: Any  # crisis_tool.runtime.manifest.Manifest
    failed: list[str] = field(default_factory=list)
    tar: Path | None = None
    built: dict[str, Any] = field(default_factory=dict)  # what a bundle-built format added (e.g. engines)


