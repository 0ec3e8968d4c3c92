"""Run dir -> validated bundle: rebuild CLIP, export graphs, gate parity, add precision variants, write."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from crisis_tool.export.calibration import gate_data_for, spec_from_options
from crisis_tool.export.gate_report import failures
from crisis_tool.export.graphs import build_graph_module
from crisis_tool.export.onnx_export import export_graph
from crisis_tool.export.options import DEFAULT_MAX_BATCH, ExportOptions, ExportResult
from crisis_tool.export.precision import build_variant
from crisis_tool.export.validate import reference_cases, validate_graphs, validation_batches
from crisis_tool.runtime.atomic_files import check_writable_dir
from crisis_tool.runtime.errors import CrisisToolError, UsageError


def check_options(opts: ExportOptions) -> tuple[Path, Path]:
    """(run dir, bundle dir) of a run-dir export; UsageError before any work when the request is unusable.

    The request itself (format, precision, options the format takes) is checked by `formats.check_request`.
    """
    if opts.model is None or opts.out is None:
        raise UsageError("export needs --model RUN_DIR and --out BUNDLE_DIR")
    out = Path(opts.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.force:
        raise UsageError(f"--out {out} exists and is not empty; choose another path or pass --force")
    check_writable_dir(out.resolve().parent, "--out folder")
    return Path(opts.model), out


def export_bundle(opts: ExportOptions, progress: Any = None) -> ExportResult:
    """The whole export. Builds in a temp dir next to `out`; moves it into place only on success."""
    from crisis_tool.clip_loader import load_recorded_clip
    from crisis_tool.export.bundle_writer import write_bundle, write_tar
    from crisis_tool.models.heads import BATCH_COUPLED_HEADS
    from crisis_tool.run_dir import load_run
    from crisis_tool.runtime.tokenizer import ClipTokenizer
    from crisis_tool.torch_reference import TorchBackend

    model, out = check_options(opts)
    calibration = spec_from_options(opts)
    calibration.check()
    precision = opts.precision or "fp32"
    max_batch = opts.max_batch or DEFAULT_MAX_BATCH
    run = load_run(model)
    for task, head_cfg in run.head_configs().items():
        if head_cfg.head in BATCH_COUPLED_HEADS:
            raise UsageError(
                f"{opts.model}: the {task} head {head_cfg.head!r} couples the samples of a batch and cannot be "
                "exported; train a 'guided' or 'guided-diff' head"
            )
    spec = run.model_spec()
    if opts.explain:  # heads with Differential Attention also weigh the post's words
        spec = spec.with_explain(task for task, head in run.heads.items() if getattr(head, "weighs_words", False))
    clip = load_recorded_clip(run.config["clip"], model)
    tok = ClipTokenizer(clip.vocab_path, context_length=clip.context_length)
    size = int(run.config["preprocess"]["size"])
    dims = {"H": size, "W": size, "L": clip.context_length, "D": clip.embed_dim, "eot": int(tok.eot_token_id)}
    out = out.resolve()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _step(progress, "exporting fp32 graphs")
        fp32_paths = {}
        for name, graph in spec.graphs().items():
            module = build_graph_module(graph, clip.model, run.heads, tok.eot_token_id)
            fp32_paths[name] = export_graph(module, graph, tmp / f"{name}.onnx", graph.dims(dims), opts.opset)
        _step(progress, "validating fp32 graphs")
        reference = TorchBackend(clip.model, run.heads, clip.context_length, spec=spec)
        gate_data = gate_data_for(calibration, preprocess=run.config["preprocess"], tokenizer=tok,
                                  text_source=run.config["text_source"], max_batch=max_batch,
                                  batches=validation_batches(max_batch))
        cases = reference_cases(reference, gate_data.batches, spec)
        parity = {"fp32": validate_graphs(spec, fp32_paths, cases, "fp32")}
        validated: dict[str, Any] = {"fp32": not failures(parity)}
        graphs = {"fp32": dict(fp32_paths)}
        if precision != "fp32":
            _step(progress, f"building and validating {precision} graphs")
            paths, report, ok = build_variant(spec, precision, tmp, fp32_paths, cases, not gate_data.generated)
            graphs[precision] = paths
            parity[precision] = report
            validated[precision] = ok
        for report in parity.values():
            for entry in report.values():
                entry["calibration"] = gate_data.source
        failed = failures(parity)
        if failed and not opts.force:
            lines = "\n".join(f"  {line}" for line in failed)
            raise CrisisToolError(f"parity gate failed; nothing written to {out} (pass --force to write the bundle "
                                  f"anyway, marked forced):\n{lines}")
        _step(progress, "writing bundle")
        manifest = write_bundle(tmp, run_config=run.config, spec=spec, heads=run.heads,
                                vocab_path=clip.vocab_path, graphs=graphs, precision=precision, parity=parity,
                                validated=validated, forced=bool(failed), max_batch=max_batch, opset=opts.opset,
                                calibration=gate_data.describe())
        _step(progress, "checking batch invariance")
        manifest = gate_batch_invariance(tmp, manifest)
        failed = failures(manifest.parity)
        if failed and not opts.force:
            lines = "\n".join(f"  {line}" for line in failed)
            raise CrisisToolError(f"batch-invariance gate failed; nothing written to {out} (pass --force to write "
                                  f"the bundle anyway, marked forced):\n{lines}")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result = ExportResult(out=out, manifest=manifest, failed=failed)
    if opts.tar:
        result.tar = write_tar(out)
    return result


def gate_batch_invariance(root: Path, manifest: Any) -> Any:
    """Each precision's graphs end to end in onnxruntime: every record alone vs inside one batch of 32 mixed
    records (noise and photo-like images, short and context-filling texts, duplicates), every head's probs.
    Recorded as `parity.<precision>.batch_invariance` (a failed check fails the export like any gate)."""
    from dataclasses import replace

    from crisis_tool.runtime.backends import create_backend
    from crisis_tool.runtime.batch_invariance import check_batch_invariance, gate_entry, mixed_inputs
    from crisis_tool.runtime.bundle import Bundle

    bundle = Bundle.load(root, verify=False)
    tok = manifest.tokenizer
    inputs = mixed_inputs(bundle.dims, n=32, sot=tok.sot_token_id, eot=tok.eot_token_id)
    parity = dict(manifest.parity)
    forced = manifest.forced
    for precision in manifest.graphs:
        backend = create_backend("onnxruntime", bundle, precision=precision, providers=["CPUExecutionProvider"])
        try:
            report = check_batch_invariance(backend, inputs, precision=precision)
        finally:
            backend.close()
        entry = {**gate_entry(report), "passed": report.passed, "n": report.n_records,
                 "batch_size": report.batch_size, "why": report.describe()}
        parity[precision] = {**parity.get(precision, {}), "batch_invariance": entry}
        forced = forced or not report.passed
    return replace(manifest, parity=parity, forced=forced).save(root)


def _step(progress: Any, text: str) -> None:
    if progress is not None:
        progress(text)
