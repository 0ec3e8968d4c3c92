"""`crisis-tool export`, `inspect` and `verify`: build, read and check deployable bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from crisis_tool.commands.console import stdout_console
from crisis_tool.runtime.errors import UsageError

console = stdout_console()


def parity_table(manifest: dict[str, Any]) -> Table:
    """Parity numbers per precision and graph, with pass/fail."""
    table = Table(title="parity vs PyTorch (ONNX Runtime CPU)")
    for col in ("precision", "graph", "max abs", "min cosine", "top-1", "batches", "gate"):
        table.add_column(col, no_wrap=True)
    validated = manifest.get("validated", {})
    notes = []
    for precision, report in manifest.get("parity", {}).items():
        if not report:
            table.add_row(precision, "-", "", "", "", "", "not validated")
            notes.append(f"{precision}: {validated.get(precision, '')}")
        for name, entry in report.items():
            gate = "pass" if entry.get("passed") else "FAIL"
            if entry.get("weight_type"):
                gate += f" ({entry['weight_type']})"
            table.add_row(
                precision, name, _fmt(entry.get("max_abs")), _fmt(entry.get("min_cosine"), ".6f"),
                _fmt(entry.get("top1_agreement")), ",".join(map(str, entry.get("batches", []))), gate,
            )
    table.caption = "\n".join(notes) or None
    return table


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def summary_table(manifest: dict[str, Any], root: Path) -> Table:
    """A readable summary of a manifest."""
    table = Table(title=f"bundle {root}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    clip = manifest.get("model", {}).get("clip", {})
    head = manifest.get("model", {}).get("head", {})
    files = manifest.get("files", {})
    rows = {
        "format": manifest.get("format_version"),
        "created": f"{manifest.get('created_utc')} by crisis-tool {manifest.get('crisis_tool_version')}",
        "task": f"{manifest.get('task')} ({', '.join(manifest.get('labels', []))})",
        "text source": manifest.get("text_source"),
        "clip": f"{clip.get('model_name')} / {clip.get('pretrained')} "
        f"(sha256 {str(clip.get('weights_sha256'))[:12]})",
        "head": f"{head.get('head')} modality={head.get('modality')}",
        "precision": f"{manifest.get('precision')} (graphs: {', '.join(sorted(manifest.get('graphs', {})))})",
        "validated": ", ".join(f"{k}={v}" for k, v in manifest.get("validated", {}).items()),
        "forced": manifest.get("forced"),
        "engines": ", ".join(
            f"{p}/{c} ({e.get('gpu_name')}, sm {e.get('compute_capability')}, TRT {e.get('trt_version')})"
            for p, comps in (manifest.get("engines") or {}).items() for c, e in comps.items()
        ) or "none (build on the target: crisis-tool export --from-bundle BUNDLE --engine trt)",
        "files": f"{len(files)} ({sum(f['size'] for f in files.values())} bytes)",
        "versions": ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items()),
    }
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: Path | None = typer.Option(None, "--model", help="Run dir from `crisis-tool train`."),
        out: Path | None = typer.Option(None, "--out", help="Bundle directory to write."),
        from_bundle: Path | None = typer.Option(
            None, "--from-bundle", help="Existing ONNX bundle: build TensorRT engines for it on this GPU."
        ),
        engine: str = typer.Option("onnx", "--engine", help="onnx, or trt to also build TensorRT engines."),
        precision: str | None = typer.Option(None, "--precision", help="fp32 (default), fp16 or int8."),
        max_batch: int | None = typer.Option(
            None, "--max-batch", help="Largest batch: TensorRT profile max, validation cap (default 64)."
        ),
        opset: int = typer.Option(17, "--opset", help="ONNX opset."),
        force: bool = typer.Option(False, "--force", help="Write even if a parity gate fails; replace --out"),
        tar: bool = typer.Option(False, "--tar", help="Also write BUNDLE_DIR.tar.gz."),
        timing_cache: Path | None = typer.Option(None, "--timing-cache", help="TensorRT timing cache file."),
    ) -> None:
        """Export a trained run to a validated, portable bundle (ONNX; TensorRT engines on a GPU)."""
        if from_bundle is not None:
            if model is not None or engine != "trt":
                raise UsageError("--from-bundle builds TensorRT engines: use --engine trt and no --model")
            from crisis_tool.export.tensorrt_build import build_bundle_engines

            entries = build_bundle_engines(from_bundle, precision, max_batch, timing_cache)
            for component, e in entries.items():
                console.print(f"{component}: {e['file']} ({e['gpu_name']}, TRT {e['trt_version']})")
            return
        if model is None or out is None:
            raise UsageError("export needs --model RUN_DIR and --out BUNDLE_DIR "
                             "(or --from-bundle BUNDLE --engine trt)")
        from crisis_tool.export.exporter import ExportOptions, export_bundle

        opts = ExportOptions(model=model, out=out, engine=engine, precision=precision or "fp32",
                             max_batch=max_batch or 64, opset=opset, force=force, tar=tar,
                             timing_cache=timing_cache)
        result = export_bundle(opts, progress=lambda text: console.print(f"[dim]{text}…[/dim]"))
        console.print(parity_table(result.manifest))
        if result.failed:
            console.print(f"[yellow]warning: parity gate failed ({', '.join(result.failed)}); "
                          "bundle written because of --force and marked forced[/yellow]")
        console.print(f"bundle written to {result.out}" + (f" and {result.tar}" if result.tar else ""))

    @app.command("inspect")
    def inspect(bundle: Path = typer.Argument(..., help="Bundle directory.")) -> None:
        """Print a bundle's manifest as a summary and its parity table."""
        from crisis_tool.runtime.bundle import read_manifest

        manifest = read_manifest(bundle)
        console.print(summary_table(manifest, bundle))
        console.print(parity_table(manifest))

    @app.command("verify")
    def verify(bundle: Path = typer.Argument(..., help="Bundle directory.")) -> None:
        """Check every file of a bundle against the sha256 and size in its manifest."""
        from crisis_tool.runtime.bundle import verify_bundle

        manifest = verify_bundle(bundle)
        console.print(f"ok: {len(manifest['files'])} files match {bundle}/manifest.json")
