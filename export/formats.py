"""The export formats, declared once (as ultralytics' `export_formats()`): what each builds from, needs and runs.

A format that builds from a bundle (`trt`) runs after the ONNX bundle is written when exporting a run dir, or
alone with `--from-bundle` (on the target device, with the lean install: no torch, no onnx). Adding a format is
one row here and its builder module. Torch-free at import: builders import their dependencies when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from crisis_tool.export.options import (
    BUNDLE,
    DEFAULT_MAX_BATCH,
    DEFAULT_OPSET,
    RUN_DIR,
    ExportOptions,
    ExportResult,
    Progress,
)
from crisis_tool.runtime.errors import UsageError

__all__ = ["BUNDLE", "DEFAULT_MAX_BATCH", "DEFAULT_OPSET", "EXPORT_FORMATS", "RUN_DIR", "ExportFormat",
           "ExportOptions", "ExportResult", "check_request", "export_formats", "run_export"]
from crisis_tool.runtime.model_spec import PRECISIONS


@dataclass(frozen=True)
class ExportFormat:
    """One row of the table."""

    name: str
    description: str
    builds_from: str  # RUN_DIR or BUNDLE
    needs: tuple[str, ...]  # "torch", "onnx", "GPU", "TensorRT"
    builder: Callable[[ExportOptions, Progress], ExportResult]
    writes_out: bool = False  # builds a new --out folder from --from-bundle (triton), instead of adding to it
    takes: frozenset[str] = frozenset()  # the ExportOptions this format reads beyond the ones every format reads


COMMON_OPTIONS = frozenset({"model", "out", "from_bundle", "format", "precision", "max_batch", "force"})
CALIBRATION_OPTIONS = frozenset({"calib_data", "calib_image_root", "calib_task", "calib_split", "calib_splits",
                                 "calib_n"})


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


def _build_triton(opts: ExportOptions, progress: Progress) -> ExportResult:
    from crisis_tool.export.triton_repo import build_triton

    return build_triton(opts, progress)


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", "ONNX graphs, validated against PyTorch, in a portable bundle", RUN_DIR,
                         ("torch", "onnx"), _build_onnx, takes=CALIBRATION_OPTIONS | {"opset", "tar", "explain"}),
    "trt": ExportFormat("trt", "TensorRT engines for this GPU, added to a bundle", BUNDLE,
                        ("GPU", "TensorRT"), _build_trt, takes=CALIBRATION_OPTIONS | {"timing_cache"}),
    "triton": ExportFormat("triton", "Triton model repository (ONNX models + ensemble) in --out", BUNDLE, (),
                           _build_triton, writes_out=True),
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
        if opts.model is not None or (opts.out is not None and not fmt.writes_out):
            raise UsageError("--from-bundle adds to that bundle: give no --model or --out")
        if fmt.writes_out and opts.out is None:
            raise UsageError(f"--format {fmt.name} writes a new folder: give --out FOLDER with --from-bundle")
    elif opts.model is None or opts.out is None:
        raise UsageError("export needs --model RUN_DIR and --out BUNDLE_DIR (or --from-bundle BUNDLE_DIR)")
    check_options_taken(opts, fmt)
    return fmt


def check_options_taken(opts: ExportOptions, fmt: ExportFormat) -> None:
    """UsageError naming an option that was set but that no format of this request reads (as ultralytics'
    `validate_args`): from a run dir, the ONNX bundle is built first, so its options apply too."""
    takes = COMMON_OPTIONS | fmt.takes
    if opts.from_bundle is None:
        takes |= EXPORT_FORMATS[BASE_FORMAT].takes
    defaults = ExportOptions()
    unused = [f.name for f in fields(ExportOptions)
              if f.name not in takes and getattr(opts, f.name) != getattr(defaults, f.name)]
    if unused:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in unused)
        raise UsageError(f"{flags} does not apply to --format {fmt.name}")


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
