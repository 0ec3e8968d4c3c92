"""Run dir -> validated bundle: rebuild CLIP, export graphs, gate parity, add precision variants, write."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crisis_tool.export.graph_specs import GRAPHS, PRECISIONS
from crisis_tool.export.graphs import build_graph_module
from crisis_tool.export.onnx_export import DEFAULT_OPSET, export_graph
from crisis_tool.export.validate import (
    ParityCase,
    RuntimeCannotRun,
    check_end_to_end,
    check_graph,
    failures,
    make_cases,
    validate_graphs,
    validation_batches,
)
from crisis_tool.runtime.errors import CrisisToolError, UsageError

ENGINES = ("onnx", "trt")


@dataclass
class ExportOptions:
    model: Path
    out: Path
    engine: str = "onnx"
    precision: str = "fp32"
    max_batch: int = 64
    opset: int = DEFAULT_OPSET
    force: bool = False
    tar: bool = False
    timing_cache: Path | None = None


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    failed: list[str] = field(default_factory=list)
    tar: Path | None = None


def check_options(opts: ExportOptions) -> None:
    if opts.engine not in ENGINES:
        raise UsageError(f"--engine {opts.engine!r}: choose from {', '.join(ENGINES)}")
    if opts.precision not in PRECISIONS:
        raise UsageError(f"--precision {opts.precision!r}: choose from {', '.join(PRECISIONS)}")
    if opts.max_batch < 1:
        raise UsageError(f"--max-batch must be >= 1 (got {opts.max_batch})")
    out = Path(opts.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.force:
        raise UsageError(f"--out {out} exists and is not empty; choose another path or pass --force")


def graph_entry(rel: str, component: str) -> dict[str, Any]:
    return {"file": rel, **GRAPHS[component].io_dict()}


def build_variant(precision: str, tmp: Path, fp32_paths: dict[str, Path], cases: list[ParityCase]
                  ) -> tuple[dict[str, Path], dict[str, Any], bool | str]:
    """Make the int8 or fp16 graphs; returns (paths, parity report, validated)."""
    from crisis_tool.export.precision import INT8_WEIGHT_TYPES, convert_fp16

    paths = {c: tmp / f"{c}.{precision}.onnx" for c in fp32_paths}
    if precision == "fp16":
        for component, src in fp32_paths.items():
            convert_fp16(src, paths[component])
        try:
            report = validate_graphs(paths, cases, precision)
        except RuntimeCannotRun as exc:
            return paths, {}, f"not validated: {exc}"
    else:
        report = {c: pick_int8(c, src, paths[c], cases, INT8_WEIGHT_TYPES) for c, src in fp32_paths.items()}
        report["end_to_end"] = check_end_to_end(paths, cases, precision)
    return paths, report, not failures({precision: report})


def pick_int8(component: str, src: Path, dst: Path, cases: list[ParityCase], weight_types: tuple[str, ...]
              ) -> dict[str, Any]:
    """Quantize with each weight type in turn; keep the first that passes the gate, else the closest one."""
    from crisis_tool.export.precision import quantize_int8

    tried: dict[str, Any] = {}
    best: tuple[float, str, dict[str, Any]] | None = None
    for weight_type in weight_types:
        candidate = dst.with_name(f"{dst.stem}.{weight_type}.onnx")
        quantize_int8(src, candidate, weight_type)
        try:
            entry = check_graph(component, candidate, cases, "int8")
        except RuntimeCannotRun as exc:
            tried[weight_type] = {"passed": False, "error": str(exc)}
            candidate.unlink(missing_ok=True)
            continue
        tried[weight_type] = {k: entry[k] for k in ("min_cosine", "top1_agreement", "passed") if k in entry}
        score = float("inf") if entry["passed"] else entry.get("min_cosine", entry.get("top1_agreement", 0.0))
        if best is None or score > best[0]:
            candidate.replace(dst)
            best = (score, weight_type, entry)
        else:
            candidate.unlink(missing_ok=True)
        if entry["passed"]:
            break
    if best is None:
        raise CrisisToolError(f"int8: onnxruntime cannot run {component} with any weight type ({tried})")
    return {**best[2], "weight_type": best[1], "tried": tried}


def export_bundle(opts: ExportOptions, progress: Any = None) -> ExportResult:
    """The whole export. Builds in a temp dir next to `out`; moves it into place only on success."""
    from crisis_tool.clip_loader import load_recorded_clip
    from crisis_tool.export.bundle_writer import write_bundle, write_tar
    from crisis_tool.models.heads import BATCH_COUPLED_HEADS
    from crisis_tool.run_dir import WEIGHTS_NAME, load_run
    from crisis_tool.runtime.tokenizer import ClipTokenizer
    from crisis_tool.torch_reference import TorchBackend

    check_options(opts)
    run = load_run(opts.model)
    head_cfg = run.head_config
    if head_cfg.head in BATCH_COUPLED_HEADS:
        raise UsageError(
            f"{opts.model}: head {head_cfg.head!r} couples the samples of a batch and cannot be exported; "
            "train a 'guided' or 'guided-diff' head"
        )
    clip = load_recorded_clip(run.config["clip"], opts.model)
    tok = ClipTokenizer(clip.vocab_path, context_length=clip.context_length)
    size = int(run.config["preprocess"]["size"])
    dims = {"H": size, "W": size, "L": clip.context_length, "D": clip.embed_dim, "C": head_cfg.num_classes,
            "eot": int(tok.eot_token_id)}
    out = Path(opts.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _step(progress, "exporting fp32 graphs")
        fp32_paths = {}
        for component in GRAPHS:
            module = build_graph_module(component, clip.model, run.head, tok.eot_token_id)
            path = tmp / f"{component}.onnx"
            fp32_paths[component] = export_graph(module, GRAPHS[component], path, dims, opts.opset)
        _step(progress, "validating fp32 graphs")
        reference = TorchBackend(clip.model, run.head, clip.context_length)
        batches = validation_batches(opts.max_batch)
        cases = make_cases(reference, batches, size, tok.sot_token_id, tok.eot_token_id, clip.context_length)
        parity = {"fp32": validate_graphs(fp32_paths, cases, "fp32")}
        validated: dict[str, Any] = {"fp32": not failures(parity)}
        graphs = {"fp32": {c: graph_entry(p.name, c) for c, p in fp32_paths.items()}}
        if opts.precision != "fp32":
            _step(progress, f"building and validating {opts.precision} graphs")
            paths, report, ok = build_variant(opts.precision, tmp, fp32_paths, cases)
            for component, entry in report.items():
                if isinstance(entry, dict) and entry.get("weight_type") == "fp32":
                    paths[component].unlink(missing_ok=True)  # left unquantized: share the fp32 file
                    paths[component] = fp32_paths[component]
            graphs[opts.precision] = {c: graph_entry(p.name, c) for c, p in paths.items()}
            parity[opts.precision] = report
            validated[opts.precision] = ok
        failed = failures(parity)
        if failed and not opts.force:
            raise CrisisToolError(f"parity gate failed ({', '.join(failed)}); nothing written to {out} "
                                  "(pass --force to write the bundle anyway, marked forced)")
        _step(progress, "writing bundle")
        write_bundle(tmp, run_config=run.config, head_weights=run.path / WEIGHTS_NAME,
                     vocab_path=clip.vocab_path, graphs=graphs, precision=opts.precision, parity=parity,
                     validated=validated, forced=bool(failed),
                     extra={"max_batch": opts.max_batch, "opset": opts.opset, "embeddings": "unnormalized"})
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result = ExportResult(out=out, manifest=_read(out), failed=failed)
    if opts.tar:
        result.tar = write_tar(out)
    if opts.engine == "trt":
        from crisis_tool.export.tensorrt_build import build_bundle_engines

        _step(progress, "building TensorRT engines")
        build_bundle_engines(out, opts.precision, opts.max_batch, opts.timing_cache)
        result.manifest = _read(out)
    return result


def _read(out: Path) -> dict[str, Any]:
    from crisis_tool.runtime.bundle import read_manifest

    return read_manifest(out)


def _step(progress: Any, text: str) -> None:
    if progress is not None:
        progress(text)
