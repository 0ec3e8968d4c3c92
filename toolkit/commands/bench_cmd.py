"""`crisis-tool bench`: latency/throughput of a bundle across backends, precisions and batch sizes.

Choices come from the backend registry and defaults from `BenchOptions`; nothing here names a backend.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import typer

from crisis_tool.runtime.backends import backend_variants
from crisis_tool.runtime.bench.options import WORKLOADS, BenchOptions
from crisis_tool.runtime.errors import UsageError

DEFAULTS = {f.name: f.default for f in fields(BenchOptions)}


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not values:
        raise UsageError(f"{option}: give at least one value")
    return values


def _text_tokens(text: str) -> tuple[int | None, ...]:
    """"real,77" -> (None, 77): None stands for real tweet lengths."""
    values: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        values.append(None if part == "real" else _ints(part, "--text-tokens")[0])
    if not values:
        raise UsageError("--text-tokens: give 'real' and/or token counts, e.g. real,77")
    return tuple(values)


def _csv(values: tuple) -> str:
    return ",".join("real" if v is None else str(v) for v in values)


def _labelled_source(data: Path | None, task: str | None, split: str, splits: str, bundle: Path,
                     records: Path | None, image_root: Path | None
                     ) -> tuple[Path | None, Path | None, dict[str, str] | None, str | None]:
    """(records, image_root, label_map, task): --data/--task/--split resolved to the split TSV of the
    CrisisMMD root, with the task's label merges; otherwise --records as given."""
    if data is None:
        if task is not None:
            raise UsageError("--task needs --data (the CrisisMMD root holding the split)")
        return records, image_root, None, None
    from crisis_tool.data.crisismmd import SPLITS, resolve_task, split_path
    from crisis_tool.runtime.manifest import MANIFEST_NAME

    if records is not None:
        raise UsageError("give --data (with --task and --split) or --input, not both")
    if split not in SPLITS:
        raise UsageError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    if task is None:
        try:
            task = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))["task"]
        except (OSError, ValueError, KeyError, TypeError):
            if not (bundle / MANIFEST_NAME).is_file():
                raise UsageError(f"--bundle {bundle}: not a bundle directory (no {MANIFEST_NAME})") from None
            raise UsageError("--data without --task: name the task (the bundle's manifest does not)") from None
    spec = resolve_task(str(task))
    path = split_path(data, spec, split, splits)
    if not path.is_file():
        raise UsageError(f"--data {data}: no {split} split for task {spec.name} ({path} not found)")
    return path, data, dict(spec.merges), spec.name


def register(app: typer.Typer) -> None:
    variants = ", ".join(backend_variants())  # read when the CLI is built: registered backends included

    @app.command("bench")
    def bench(
        bundle: Path = typer.Option(..., "--bundle", help="Bundle directory (from `crisis-tool export`)."),
        backends: str = typer.Option(_csv(("auto", *DEFAULTS["backends"])), "--backends",
                                     help=f"Comma-separated backend variants: {variants}."),
        batch_sizes: str = typer.Option(_csv(DEFAULTS["batch_sizes"]), "--batch-sizes",
                                        help="Comma-separated batch sizes."),
        workload: str = typer.Option(DEFAULTS["workload"], "--workload",
                                     help=f"What is timed: {', '.join(WORKLOADS)}."),
        component: str | None = typer.Option(None, "--component", hidden=True, help="Deprecated: --workload."),
        records: Path | None = typer.Option(None, "--input", help="JSONL/TSV of real records, as predict reads "
                                            "(default: generated JPEGs and texts of real tweet lengths)."),
        records_old: Path | None = typer.Option(None, "--records", hidden=True, help="Deprecated: --input."),
        image_root: Path | None = typer.Option(None, "--image-root", help="Folder TSV image paths are under."),
        text_tokens: str = typer.Option(_csv(DEFAULTS["text_tokens"]), "--text-tokens",
                                        help="Generated text lengths, one row set each: real (CrisisMMD tweet "
                                        "lengths) and/or N tokens, e.g. real,77."),
        seconds: float = typer.Option(DEFAULTS["seconds"], "--seconds", help="Timed budget per row (seconds)."),
        warmup: int = typer.Option(DEFAULTS["warmup"], "--warmup", help="Warm-up repetitions per row."),
        threads: int | None = typer.Option(None, "--threads", help="Intra-op threads (default: all CPUs)."),
        device: str | None = typer.Option(None, "--device", help="Device for the backends that take one (e.g. "
                                          "openvino: CPU, GPU, NPU or AUTO); the others run as usual. The "
                                          "provider column shows the device really used."),
        json_out: Path | None = typer.Option(None, "--json", help="Write header + rows as JSON."),
        markdown_out: Path | None = typer.Option(None, "--markdown", help="Write a Markdown table."),
        plot_out: Path | None = typer.Option(None, "--plot", help="Write a PNG of items/s vs batch size."),
        peak: bool = typer.Option(DEFAULTS["measure_gemm"], "--peak/--no-peak",
                                  help="Measure the roofline (each engine's MatMul peak probes)."),
        no_gemm: bool = typer.Option(False, "--no-gemm", hidden=True, help="Deprecated: --no-peak."),
        wide: bool = typer.Option(False, "--wide", help="Show every column (default: the ones that fit 80 "
                                  "columns) and the e2e time split."),
        data: Path | None = typer.Option(None, "--data", help="CrisisMMD root: with --task and --split, the "
                                         "labelled split is the workload and every row gets task metrics."),
        task: str | None = typer.Option(None, "--task", help="Task of the split (default: the bundle's)."),
        split: str = typer.Option("test", "--split", help="Split of --data: train, dev or test."),
        splits: str = typer.Option("settingA", "--splits", help="Split set under --data: settingA, all, "
                                   "agreed_label."),
        decode: str = typer.Option("exact", "--decode", help="Image decode modes, one row set each: exact "
                                   "and/or fast, e.g. exact,fast (fast rows report their embedding cosine)."),
        max_drop: float | None = typer.Option(None, "--max-drop", help="Exit 1 when an ok row's accuracy, "
                                              "macro-F1 or weighted-F1 is more than this below the reference "
                                              "row's (needs labelled records)."),
        serve_url: str | None = typer.Option(None, "--serve", help="Load a running `crisis-tool serve` at this "
                                             "URL instead: one row per --batch-sizes value as concurrent clients, "
                                             "--seconds each, next to an in-process predict row of --bundle "
                                             "(bearer token from $CRISIS_SERVE_TOKEN)."),
    ) -> None:
        """Benchmark a bundle: one row per backend x precision x batch size, PyTorch eager as reference.

        Rows that cannot run here (no GPU, no TensorRT, a precision the bundle lacks) are reported as
        "unavailable" and do not fail the run.
        """
        if serve_url is not None:
            from crisis_tool.runtime.bench.serve_load import run_serve_bench

            typer.echo(run_serve_bench(serve_url, bundle, _ints(batch_sizes, "--batch-sizes"), seconds, threads))
            return
        from rich.console import Console

        from crisis_tool.commands.aliases import deprecated_alias
        from crisis_tool.commands.console import stdout_console
        from crisis_tool.progress import status_line
        from crisis_tool.runtime.bench import run_bench
        from crisis_tool.runtime.bench.report import render_table, write_json, write_markdown, write_plot
        from crisis_tool.runtime.bench.task_metrics import check_max_drop
        from crisis_tool.runtime.charts import require_matplotlib
        from crisis_tool.runtime.manifest import MANIFEST_NAME
        from crisis_tool.runtime.table_columns import wide_enough

        workload = deprecated_alias(workload, component, "--component", "--workload", unset=DEFAULTS["workload"])
        records = deprecated_alias(records, records_old, "--records", "--input")
        no_gemm = not deprecated_alias(peak, False if no_gemm else None, "--no-gemm", "--no-peak",
                                       unset=DEFAULTS["measure_gemm"])
        records, image_root, label_map, task = _labelled_source(data, task, split, splits, bundle, records,
                                                                image_root)
        opts = BenchOptions(
            bundle=bundle, backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
            batch_sizes=_ints(batch_sizes, "--batch-sizes"), workload=workload, seconds=seconds,
            warmup=warmup, threads=threads, device=device, records=records, image_root=image_root,
            text_tokens=_text_tokens(text_tokens), measure_gemm=not no_gemm,
            decode=tuple(d.strip() for d in decode.split(",") if d.strip()), label_map=label_map, task=task,
            max_drop=max_drop,
        )
        opts.check()
        if plot_out is not None:
            require_matplotlib("--plot")  # before the long work, not after it
        if not (bundle / MANIFEST_NAME).is_file():
            raise UsageError(f"--bundle {bundle}: not a bundle directory (no {MANIFEST_NAME})")
        err = Console(stderr=True)
        with status_line("bench") as update:
            result = run_bench(opts, progress=update)
        table = render_table(result, wide=wide)
        wide_enough(stdout_console(), table).print(table)
        for path, writer in ((json_out, write_json), (markdown_out, write_markdown), (plot_out, write_plot)):
            if path is not None:
                writer(result, path)
                err.print(f"wrote {path}")
        if max_drop is not None:
            check_max_drop(result, max_drop)
        if not wide:
            err.print("next: --wide for every column and the e2e time split; --markdown FILE and --plot FILE to "
                      "keep the results")
