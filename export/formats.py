"""The export formats, declared once (as ultralytics' `export_formats()`): what each builds from, needs and runs.

A format that builds from a bundle (`trt`) runs after the ONNX bundle is written when exporting a run dir, or
alone with `--from-bundle` (on the target device, with the lean install: no torch, no onnx). Adding a format is
one row here and its builder module. Torch-free at import: builders import their dependencies when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crisis_tool.export.calibration import DEFAULT_GATE_RECORDS
from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.model_spec import PRECISIONS

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


@dataclass(frozen=True)
class ExportFormat:
    """One row of the table."""

    name: str
    description: str
    builds_from: str  # RUN_DIR or BUNDLE
    needs: tuple[str, ...]  # "torch", "onnx", "GPU", "TensorRT"
    builder: Callable[[ExportOptions, Progress], ExportResult]


def _build_onnx(opts: ExportOptions, progress: Progress) -> ExportResult:
    from crisis_tool.export.exporter import export_bundle

    return export_bundle(opts, progress)


def _build_trt(opts: ExportOptions, progress: Progress) -> ExportResult:
    from crisis_tool.export.calibration import spec_from_options
    from crisis_tool.export.tensorrt_build import build_bundle_engines
    from crisis_tool.runtime.manifest import Manifest

    bundle = opts.bundle_dir
    calibration = spec_from_options(opts)
    calibration.check()
    if progress is not None:
        progress("building TensorRT engines")
    engines = build_bundle_engines(bundle, opts.precision, opts.max_batch, opts.timing_cache, calibration)
    return ExportResult(out=bundle, manifest=Manifest.load(bundle), built=engines)


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", "ONNX graphs, validated against PyTorch, in a portable bundle", RUN_DIR,
                         ("torch", "onnx"), _build_onnx),
    "trt": ExportFormat("trt", "TensorRT engines for this GPU, added to a bundle", BUNDLE,
                        ("GPU", "TensorRT"), _build_trt),
}
BASE_FORMAT = "onnx"  # the format every bundle starts as


def export_formats() -> list[dict[str, Any]]:
    """The table as rows (name, builds from, needs, description), e.g. for `--help` or docs."""
    return [{"name": f.name, "builds_from": f.builds_from, "needs": list(f.needs), "description": f.description}
            for f in EXPORT_FORMATS.values()]


def check_request(opts: ExportOptions) -> ExportFormat:
    """The requested format, after checking the request against the table; UsageError otherwise."""
    fmt = EXPORT_FORMATS.get(opts.format)
    if fmt is None:
        raise UsageError(f"--format {opts.format!r}: choose from {', '.join(EXPORT_FORMATS)}")
    if opts.precision is not None and opts.precision not in PRECISIONS:
        raise UsageError(f"--precision {opts.precision!r}: choose from {', '.join(PRECISIONS)}")
    if opts.max_batch is not None and opts.max_batch < 1:
        raise UsageError(f"--max-batch must be >= 1 (got {opts.max_batch})")
    if opts.from_bundle is not None:
        if fmt.builds_from != BUNDLE:
            bundle_formats = [f.name for f in EXPORT_FORMATS.values() if f.builds_from == BUNDLE]
            raise UsageError(f"--from-bundle builds {', '.join(bundle_formats)}; format {fmt.name!r} builds from "
                             "a run dir (--model RUN_DIR --out BUNDLE_DIR)")
        if opts.model is not None or opts.out is not None:
            raise UsageError("--from-bundle adds to that bundle: give no --model or --out")
    elif opts.model is None or opts.out is None:
        raise UsageError("export needs --model RUN_DIR and --out BUNDLE_DIR (or --from-bundle BUNDLE_DIR)")
    return fmt


def run_export(opts: ExportOptions, progress: Progress = None) -> ExportResult:
    """Build the requested format: from a run dir through the ONNX bundle, or from an existing bundle."""
    fmt = check_request(opts)
    if opts.from_bundle is not None:
        return fmt.builder(opts, progress)
    result = EXPORT_FORMATS[BASE_FORMAT].builder(opts, progress)
    if fmt.builds_from == BUNDLE:
        added = fmt.builder(opts, progress)
        result.manifest, result.built = added.manifest, added.built
    return result
