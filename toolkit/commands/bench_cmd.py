"""`crisis-tool bench`: latency/throughput of a bundle across backends, precisions and batch sizes."""

from __future__ import annotations

from pathlib import Path

import typer

from crisis_tool.runtime.errors import UsageError


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


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        bundle: Path = typer.Option(..., "--bundle", help="Bundle directory (from `crisis-tool export`)."),
        backends: str = typer.Option(
            "torch,onnxruntime,onnxruntime-int8,onnxruntime-fp16,tensorrt,tensorrt-fp16", "--backends",
            help="Comma-separated: torch, onnxruntime[-int8|-fp16], tensorrt[-fp16|-int8]."),
        batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes."),
        component: str = typer.Option("e2e", "--component", help="e2e, image, text or head."),
        records: Path | None = typer.Option(None, "--records", help="JSONL/TSV of real records (default: "
                                            "generated JPEGs and texts of real tweet lengths)."),
        image_root: Path | None = typer.Option(None, "--image-root", help="Folder TSV image paths are under."),
        text_tokens: str = typer.Option("real", "--text-tokens", help="Generated text lengths, one row set "
                                        "each: real (CrisisMMD tweet lengths) and/or N tokens, e.g. real,77."),
        seconds: float = typer.Option(3.0, "--seconds", help="Timed budget per row (seconds)."),
        warmup: int = typer.Option(2, "--warmup", help="Warm-up repetitions per row."),
        threads: int | None = typer.Option(None, "--threads", help="Intra-op threads (default: all CPUs)."),
        json_out: Path | None = typer.Option(None, "--json", help="Write header + rows as JSON."),
        markdown_out: Path | None = typer.Option(None, "--markdown", help="Write a Markdown table."),
        plot_out: Path | None = typer.Option(None, "--plot", help="Write a PNG of items/s vs batch size."),
        no_gemm: bool = typer.Option(False, "--no-gemm", help="Skip the GEMM roofline measurement."),
    ) -> None:
        """Benchmark a bundle: one row per backend x precision x batch size, PyTorch eager as reference.

        Rows that cannot run here (no GPU, no TensorRT, a precision the bundle lacks) are reported as
        "unavailable" and do not fail the run.
        """
        from rich.console import Console

        from crisis_tool.commands.console import stdout_console
        from crisis_tool.runtime.bench import BenchOptions, run_bench
        from crisis_tool.runtime.bench_report import render_table, write_json, write_markdown, write_plot

        opts = BenchOptions(
            bundle=bundle, backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
            batch_sizes=_ints(batch_sizes, "--batch-sizes"), component=component, seconds=seconds,
            warmup=warmup, threads=threads, records=records, image_root=image_root,
            text_tokens=_text_tokens(text_tokens),
            measure_gemm=not no_gemm,
        )
        opts.check()
        if not (bundle / "manifest.json").is_file():
            raise UsageError(f"--bundle {bundle}: not a bundle directory (no manifest.json)")
        err = Console(stderr=True)
        with err.status("benchmarking") as status:
            result = run_bench(opts, progress=lambda msg: status.update(f"bench: {msg}"))
        stdout_console().print(render_table(result))
        for path, writer in ((json_out, write_json), (markdown_out, write_markdown), (plot_out, write_plot)):
            if path is not None:
                writer(result, path)
                err.print(f"wrote {path}")
