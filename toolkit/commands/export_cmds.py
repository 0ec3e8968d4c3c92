"""`crisis-tool export`, `inspect` and `verify`: build, read and check deployable bundles.

Formats, what they build from and their defaults come from `crisis_tool.export.formats`.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from crisis_tool.commands.console import stdout_console
from crisis_tool.export.formats import BUNDLE, DEFAULT_MAX_BATCH, EXPORT_FORMATS, ExportOptions
from crisis_tool.parity_table import parity_table
from crisis_tool.runtime.manifest import Manifest
from crisis_tool.runtime.model_spec import PRECISIONS

console = stdout_console()
DEFAULTS = {f.name: f.default for f in fields(ExportOptions)}


def summary_table(manifest: Manifest, run_config: dict[str, Any], root: Path) -> Table:
    """A readable summary of a manifest and the run config stored beside it."""
    table = Table(title=f"bundle {root}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    clip = run_config.get("clip") or {}
    head = run_config.get("head") or {}
    rows = {
        "format": manifest.format_version,
        "created": f"{manifest.created_utc} by crisis-tool {manifest.crisis_tool_version}",
        "task": f"{manifest.task} ({', '.join(manifest.labels)})",
        "text source": manifest.text_source,
        "clip": f"{clip.get('model_name')} / {clip.get('pretrained')} "
        f"(sha256 {str(clip.get('weights_sha256'))[:12]})",
        "head": f"{head.get('head')} modality={head.get('modality')}",
        "precision": f"{manifest.precision} (graphs: {', '.join(sorted(manifest.graphs))})",
        "validated": ", ".join(f"{k}={v}" for k, v in manifest.validated.items()),
        "forced": manifest.forced,
        "engines": ", ".join(
            f"{p}/{g} ({e.gpu_name}, sm {e.compute_capability}, TRT {e.trt_version})"
            for p, entries in manifest.engines.items() for g, e in entries.items()
        ) or "none (build on the target: crisis-tool export --from-bundle BUNDLE --format trt)",
        "files": f"{len(manifest.files)} ({sum(f.size for f in manifest.files.values())} bytes)",
        "versions": ", ".join(f"{k} {v}" for k, v in manifest.versions.items()),
    }
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def _format_help() -> str:
    rows = [f"{f.name} ({f.description}; builds from a {f.builds_from}; needs {', '.join(f.needs)})"
            for f in EXPORT_FORMATS.values()]
    return "Export format: " + "; ".join(rows) + "."


def register(app: typer.Typer) -> None:
    bundle_formats = ", ".join(f.name for f in EXPORT_FORMATS.values() if f.builds_from == BUNDLE)

    @app.command("export")
    def export(
        model: Path | None = typer.Option(None, "--model", help="Run dir from `crisis-tool train`."),
        out: Path | None = typer.Option(None, "--out", help="Bundle directory to write."),
        from_bundle: Path | None = typer.Option(
            None, "--from-bundle", help=f"Existing bundle to add a format to on this machine ({bundle_formats})."
        ),
        format_: str = typer.Option(DEFAULTS["format"], "--format", help=_format_help()),
        engine: str | None = typer.Option(None, "--engine", hidden=True, help="Deprecated: --format."),
        precision: str | None = typer.Option(
            None, "--precision", help=f"{', '.join(PRECISIONS)} (default fp32, or the bundle's own)."
        ),
        max_batch: int | None = typer.Option(
            None, "--max-batch",
            help=f"Largest batch: TensorRT profile max, validation cap (default {DEFAULT_MAX_BATCH}, "
            "or the bundle's own with --from-bundle).",
        ),
        opset: int = typer.Option(DEFAULTS["opset"], "--opset", help="ONNX opset."),
        force: bool = typer.Option(DEFAULTS["force"], "--force",
                                   help="Write even if a parity gate fails; replace --out"),
        tar: bool = typer.Option(DEFAULTS["tar"], "--tar", help="Also write BUNDLE_DIR.tar.gz."),
        explain: bool = typer.Option(DEFAULTS["explain"], "--explain/--no-explain",
                                     help="Head graphs also output each post's modality share (image vs text), "
                                          "parity-gated; predict then adds `explain` per head."),
        timing_cache: Path | None = typer.Option(None, "--timing-cache", help="TensorRT timing cache file."),
        calib_data: Path | None = typer.Option(
            DEFAULTS["calib_data"], "--calib-data",
            help="Records for int8 calibration and the fp32/fp16/int8 parity gates: what predict reads (JSONL, "
            "a TSV with --image-root, a folder of images) or a CrisisMMD root with --task and --split; without it "
            "both use generated inputs (recorded as such)."),
        calib_image_root: Path | None = typer.Option(
            DEFAULTS["calib_image_root"], "--image-root", help="Folder a --calib-data TSV's image paths are under."),
        calib_task: str | None = typer.Option(
            DEFAULTS["calib_task"], "--task", help="Task of a CrisisMMD --calib-data root (with --split)."),
        calib_split: str | None = typer.Option(
            DEFAULTS["calib_split"], "--split", help="Split of a CrisisMMD --calib-data root: train, dev or test."),
        calib_splits: str = typer.Option(
            DEFAULTS["calib_splits"], "--splits", help="Split set under a CrisisMMD --calib-data root."),
        calib_n: int = typer.Option(
            DEFAULTS["calib_n"], "--calib-n",
            help="Records of --calib-data used for the gates (the first ones also calibrate)."),
    ) -> None:
        """Export a trained run to a validated, portable bundle (ONNX; TensorRT engines on a GPU)."""
        from crisis_tool.commands.aliases import deprecated_alias
        from crisis_tool.export.formats import run_export

        format_ = deprecated_alias(format_, engine, "--engine", "--format", unset=DEFAULTS["format"])

        opts = ExportOptions(model=model, out=out, from_bundle=from_bundle, format=format_, precision=precision,
                             max_batch=max_batch, opset=opset, force=force, tar=tar, timing_cache=timing_cache,
                             calib_data=calib_data, calib_image_root=calib_image_root, calib_task=calib_task,
                             calib_split=calib_split, calib_splits=calib_splits, calib_n=calib_n, explain=explain)
        result = run_export(opts, progress=lambda text: console.print(f"[dim]{text}…[/dim]"))
        for graph, e in result.built.items():
            console.print(f"{graph}: {e['file']} ({e['gpu_name']}, TRT {e['trt_version']})")
        if from_bundle is not None:
            return
        console.print(parity_table(result.manifest))
        if result.failed:
            console.print(f"[yellow]warning: parity gate failed ({', '.join(result.failed)}); "
                          "bundle written because of --force and marked forced[/yellow]")
        console.print(f"bundle written to {result.out}" + (f" and {result.tar}" if result.tar else ""))
        typer.echo(f"next: crisis-tool predict --bundle {result.out} --input POSTS.jsonl --output predictions.jsonl; "
                   f"crisis-tool bench --bundle {result.out}", err=True)

    @app.command("inspect")
    def inspect(
        bundle: Path = typer.Argument(..., help="Bundle directory."),
        wide: bool = typer.Option(False, "--wide", help="Every parity column (default: the ones that fit 80 "
                                  "columns)."),
    ) -> None:
        """Print a bundle's manifest as a summary and its parity table (without checking hashes)."""
        from crisis_tool.runtime.bundle import Bundle

        loaded = Bundle.load(bundle, verify=False)
        console.print(summary_table(loaded.manifest, loaded.run_config(), bundle))
        console.print(parity_table(loaded.manifest, wide=wide))
        if not wide:
            typer.echo(f"next: crisis-tool inspect {bundle} --wide for every parity column; crisis-tool verify "
                       f"{bundle} to check its files", err=True)

    @app.command("verify")
    def verify(
        bundle: Path = typer.Argument(..., help="Bundle directory."),
        pubkey: Path | None = typer.Option(
            None, "--pubkey", help="Ed25519 public key (.pub from `crisis-tool keygen`): the bundle must be signed "
                                   "by it (`crisis-tool sign`)."),
    ) -> None:
        """Check a bundle: its manifest's digest and schema, every file's sha256 and size, no unlisted file, its
        run config and, with --pubkey, its signature."""
        from crisis_tool.commands.sign_cmds import verify_report

        console.print(verify_report(bundle, pubkey))
