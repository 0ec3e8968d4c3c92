"""Bench output: a rich table with the machine header, JSON, a Markdown table and a PNG plot (written atomically)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from crisis_tool.runtime.atomic_files import atomic_write_text
from crisis_tool.runtime.bench.report_lines import extra_lines, peak_line, speed_vs_f1_chart
from crisis_tool.runtime.charts import line_chart
from crisis_tool.runtime.errors import UsageError

COLUMNS: tuple[tuple[str, str], ...] = (
    ("choice", "backend"), ("precision", "prec"), ("provider", "provider"), ("batch_size", "batch"),
    ("text_tokens", "text"), ("decode", "decode"), ("status", "status"), ("model_mb", "MB"), ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"), ("items_per_s", "items/s"), ("speedup_vs_torch", "speedup"),
    ("max_abs_diff", "max|diff|"), ("cosine", "min cos"), ("top1_agreement", "top-1"),
    ("accuracy", "acc"), ("accuracy_diff", "Δacc"), ("macro_f1", "macro-F1"), ("macro_f1_diff", "ΔmF1"),
    ("weighted_f1", "w-F1"), ("weighted_f1_diff", "ΔwF1"), ("failed", "failed"), ("decode_cosine", "fast cos"),
    ("gflops", "GFLOP/s"), ("roofline_pct", "% peak"), ("cold_start_s", "cold s"),
)
# Shown only when a row has them: task metrics (labelled records), decode modes other than exact.
OPTIONAL_COLUMNS = {"decode": "exact", **dict.fromkeys(
    ("accuracy", "accuracy_diff", "macro_f1", "macro_f1_diff", "weighted_f1", "weighted_f1_diff", "failed",
     "decode_cosine"))}


def shown_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """COLUMNS less the optional ones that no row fills (or that hold only their default)."""
    return [(key, label) for key, label in COLUMNS if key not in OPTIONAL_COLUMNS
            or any(row.get(key) not in (None, OPTIONAL_COLUMNS[key]) for row in rows)]


STAGE_COLUMNS = (("decode_preprocess", "decode+prep"), ("tokenize", "tokenize"), ("image_encoder", "image enc"),
                 ("text_encoder", "text enc"), ("head", "head"))


def fmt(key: str, value: Any) -> str:
    """One cell: numbers with sensible precision, '-' for missing."""
    if value is None:
        return "-"
    if key == "speedup_vs_torch":
        return f"{value:.2f}x"
    if key in ("max_abs_diff",):
        return f"{value:.2e}"
    if key in ("cosine",):
        return f"{value:.6f}"
    if key.endswith("_diff"):
        return f"{value:+.4f}"
    if key in ("accuracy", "macro_f1", "weighted_f1"):
        return f"{value:.4f}"
    if key == "decode_cosine":
        return f"{value:.6f}"
    if key == "top1_agreement":
        return f"{100 * value:.1f}%"
    if key in ("non_encoder_share",):
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def header_lines(header: dict[str, Any]) -> list[str]:
    """The machine and method, as printed above the table and in the Markdown file."""
    versions = ", ".join(f"{k} {v}" for k, v in header.get("versions", {}).items() if v)
    lines = [
        f"CPU: {header.get('cpu')} ({header.get('cpu_count')} CPUs, {header.get('threads')} threads used), "
        f"GPU: {header.get('gpu') or 'none'}, {header.get('os')}, Python {header.get('python')}, "
        f"load average {header.get('load_average')}",
        f"versions: {versions}",
        peak_line(header),
        f"bundle: {header.get('bundle')}, workload: {header.get('workload')}, inputs: {header.get('inputs')}",
        f"method: {header.get('warmup')} warm-up reps, then ~{header.get('seconds_per_row')} s per row "
        f"interleaved round-robin; {header.get('timing')}; parity vs {header.get('parity_reference') or 'n/a'}",
    ]
    return lines + extra_lines(header)


def _stage_text(row: dict[str, Any]) -> str:
    stages = row.get("stages_ms")
    if not stages:
        return "-"
    parts = [f"{label} {stages[key]:.1f}" for key, label in STAGE_COLUMNS]
    return ", ".join(parts) + f" ms; non-encoder {fmt('non_encoder_share', row.get('non_encoder_share'))}"


def render_table(result: dict[str, Any]) -> Group:
    """Header lines + one table row per result row (+ the e2e stage split)."""
    rows = result["rows"]
    table = Table(show_lines=False, header_style="bold")
    columns = shown_columns(rows)
    for _, label in columns:
        left = label in ("backend", "prec", "provider", "status")
        table.add_column(label, justify="left" if left else "right", no_wrap=label == "status",
                         max_width=14 if label == "status" else None, overflow="ellipsis")
    reasons: dict[str, str] = {}
    for row in rows:
        style = None if row["status"] == "ok" else "dim"
        table.add_row(*(fmt(key, row.get(key)) for key, _ in columns), style=style)
        if row["status"] != "ok":
            reasons.setdefault(row["choice"], row["status"])
    parts: list[Any] = [Text(line) for line in header_lines(result["header"])] + [table]
    parts += [Text(f"  {choice}: {reason}") for choice, reason in reasons.items()]
    stage_rows = [r for r in rows if r.get("stages_ms")]
    if stage_rows:
        parts.append(Text("e2e time per batch (median ms): decode+preprocess, tokenize, image/text encoder, head"))
        parts += [Text(f"  {r['choice']} b={r['batch_size']} text={r['text_tokens']}: {_stage_text(r)}")
                  for r in stage_rows]
    return Group(*parts)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Header and rows as JSON (written atomically)."""
    return atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def markdown(result: dict[str, Any]) -> str:
    """A GitHub Markdown table preceded by the machine header."""
    lines = [f"- {line}" for line in header_lines(result["header"])] + [""]
    columns = shown_columns(result["rows"])
    lines.append("| " + " | ".join(label for _, label in columns) + " | e2e split |")
    lines.append("|" + "|".join("---" for _ in range(len(columns) + 1)) + "|")
    for row in result["rows"]:
        cells = [fmt(key, row.get(key)).replace("|", "/") for key, _ in columns] + [_stage_text(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(result: dict[str, Any], path: str | Path) -> Path:
    """The Markdown table (written atomically)."""
    return atomic_write_text(path, markdown(result))


def write_plot(result: dict[str, Any], path: str | Path) -> Path:
    """PNG line chart of items/s vs batch size, one line per backend/precision (ok rows only), written atomically.

    With task metrics: items/s against macro-F1 instead, one labelled point per row.
    """
    if any(row.get("macro_f1") is not None for row in result["rows"]):
        return speed_vs_f1_chart(result, path)
    series: dict[str, list[tuple[float, float]]] = {}
    variants = {row.get("text_tokens") for row in result["rows"]}
    for row in result["rows"]:
        if row["status"] == "ok" and row.get("items_per_s"):
            name = row["choice"] + (f" {row.get('text_tokens')}" if len(variants) > 1 else "")  # legend: 24 chars
            series.setdefault(name, []).append((row["batch_size"], row["items_per_s"]))
    if not series:
        raise UsageError(f"--plot {path}: no row ran, nothing to plot")
    header = result["header"]
    title = f"crisis-tool bench ({header.get('workload')}) on {header.get('cpu')}, {header.get('threads')} threads"
    return line_chart(series, path, title, "batch size", "items/s", log2_x=True)
