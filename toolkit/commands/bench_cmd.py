"""`crisis-tool bench`: latency/throughput of a bundle across backends, precisions and batch sizes.

Choices come from the backend registry and defaults from `BenchOptions`; nothing here names a backend.
"""

from __future__ import annotations

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


LabelledSource = tuple[Path, Path | None, dict[str, str] | None, str]


def _labelled_sources(data: Path | None, task: str | None, split: str, splits: str, bundle: Path,
                      records: Path | None, image_root: Path | None) -> list[LabelledSource] | None:
    """--data/--split resolved to one labelled split TSV per head (`--task a,b` selects heads; default: every
    head of the bundle), each with its task's label merges; None: --input as given (or nothing labelled)."""
    if data is None:
        if task is not None:
            raise UsageError("--task needs --data (the CrisisMMD root holding the split)")
        return None
    from crisis_tool.data.crisismmd import SPLITS, resolve_task, split_path
    from crisis_tool.runtime.bundle import Bundle

    if records is not None:
        raise UsageError("give --data (with --split) or --input, not both")
    if split not in SPLITS:
        raise UsageError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    heads = Bundle.load(bundle, verify=False).spec.select(task)
    out: list[LabelledSource] = []
    for head in heads:
        spec = resolve_task(head.task)
        path = split_path(data, spec, split, splits)
        if not path.is_file():
            raise UsageError(f"--data {data}: no {split} split for task {spec.name} ({path} not found)")
        out.append((path, data, dict(spec.merges), head.task))
    return out


def _check_bundle(bundle: Path) -> None:
    from crisis_tool.runtime.manifest import MANIFEST_NAME

    if not (bundle / MANIFEST_NAME).is_file():
        raise UsageError(f"--bundle {bundle}: not a bundle directory (no {MANIFEST_NAME})")


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
        task: str | None = typer.Option(None, "--task", help="Heads to score with --data, e.g. damage or "
                                        "informative,damage (default: every head of the bundle)."),
        split: str = typer.Option("test", "--split", help="Split of --data: train, dev or test."),
        llava_file: Path | None = typer.Option(None, "--llava-file", help="LLaVA captions by image id for the "
                                               "labelled records (bundles trained on llava text)."),
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
        from crisis_tool.runtime.atomic_files import check_writable_dir
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
        _check_bundle(bundle)
        sources = _labelled_sources(data, task, split, splits, bundle, records, image_root)
        label_map = None
        if sources:
            (records, image_root, label_map, task), *more = sources
        else:
            more = []
        opts = BenchOptions(
            bundle=bundle, backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
            batch_sizes=_ints(batch_sizes, "--batch-sizes"), workload=workload, seconds=seconds,
            warmup=warmup, threads=threads, device=device, records=records, image_root=image_root,
            text_tokens=_text_tokens(text_tokens), measure_gemm=not no_gemm,
            decode=tuple(d.strip() for d in decode.split(",") if d.strip()), label_map=label_map, task=task,
            max_drop=max_drop, more_labelled=tuple(more), llava_file=llava_file,
        )
        opts.check()
        if plot_out is not None:
            require_matplotlib("--plot")  # before the long work, not after it
        for flag, out_path in (("--json", json_out), ("--markdown", markdown_out), ("--plot", plot_out)):
            if out_path is not None:
                if out_path.is_dir():
                    raise UsageError(f"{flag} {out_path} is a folder; give a file name")
                check_writable_dir(out_path.parent, f"{flag} folder")
        if not (bundle / MANIFEST_NAME).is_file():
            raise UsageError(f"--bundle {bundle}: not a bundle directory (no {MANIFEST_NAME})")
        err = Console(stderr=True)
        with status_line("bench") as update:
            result = run_bench(opts, progress=update)
        table = render_table(result, wide=wide)
        wide_enough(stdout_console(), table).print(table)
        if result["header"].get("text_recipe"):  # every scored row says "differs" (--wide, JSON): why, once
            err.print(f"note: {result['header']['text_recipe']}", soft_wrap=True)
        for path, writer in ((json_out, write_json), (markdown_out, write_markdown), (plot_out, write_plot)):
            if path is not None:
                writer(result, path)
                err.print(f"wrote {path}")
        if max_drop is not None:
            check_max_drop(result, max_drop)
        if not wide:
            err.print("next: --wide for every column and the e2e time split; --markdown FILE and --plot FILE to "
                      "keep the results")
