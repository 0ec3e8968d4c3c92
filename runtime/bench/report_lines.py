"""Bench report text: the table's columns (one list for the terminal and Markdown) and the header lines."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from crisis_tool.runtime.table_columns import Column, Row


def _num(key: str, spec: str, suffix: str = "", scale: float = 1.0) -> Callable[[Row], str | None]:
    def cell(row: Row) -> str | None:
        value = row.get(key)
        if value is None:
            return None
        return f"{value:{spec}}{suffix}" if scale == 1.0 else f"{scale * value:{spec}}{suffix}"
    return cell


def _rate(row: Row) -> str | None:
    value = row.get("items_per_s")
    return None if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ms(key: str) -> Callable[[Row], str | None]:
    def cell(row: Row) -> str | None:
        value = row.get(key)
        return None if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return cell


def backend_cell(row: Row) -> str:
    """The --backends choice, with its precision where the choice does not already name it."""
    choice, precision = str(row.get("choice")), str(row.get("precision"))
    return choice if choice.endswith(precision) else f"{choice} {precision}"


def parity_cell(row: Row) -> str | None:
    """One parity number against the reference row: top-1 agreement where the row has logits, else min cosine."""
    if row.get("_is_reference"):
        return "ref"
    if row.get("top1_agreement") is not None:
        return f"top1 {100 * row['top1_agreement']:.0f}%"
    if row.get("cosine") is not None:
        return f"cos {row['cosine']:.4f}"
    return None


def stage_text(row: Row) -> str | None:
    """The e2e time split of a row (median ms per batch) and its non-encoder share."""
    stages = row.get("stages_ms")
    if not stages:
        return None
    names = (("decode_preprocess", "decode+prep"), ("tokenize", "tokenize"), ("image_encoder", "image enc"),
             ("text_encoder", "text enc"), ("head", "head"))
    share = row.get("non_encoder_share")
    text = ", ".join(f"{label} {stages[key]:.1f}" for key, label in names if key in stages) + " ms"
    return text + (f"; non-encoder {100 * share:.1f}%" if share is not None else "")


def invariance_cell(row: Mapping[str, Any]) -> str | None:
    """"yes 3e-08" / "NO 4.2e-03": the row's backend, each record alone vs in a batch of mixed records."""
    if row.get("batch_invariant") is None:
        return None
    return f"{'yes' if row['batch_invariant'] else 'NO'} {row['batch_invariance_max_diff']:.1g}"


def bench_columns(rows: list[dict[str, Any]]) -> list[Column]:
    """Every bench column in order; the `default` ones fit 80 columns. Text and decode columns appear when the
    run has several text lengths or a decode mode other than exact."""
    several_texts = len({r.get("text_tokens") for r in rows}) > 1
    other_decode = any(r.get("decode") not in (None, "exact") for r in rows)
    return [
        Column("backend", backend_cell, left=True),
        Column("prec", lambda r: r.get("precision"), default=False, left=True),
        Column("provider", lambda r: r.get("provider"), default=False, left=True),
        Column("batch", _num("batch_size", "d")),
        Column("text", lambda r: str(r.get("text_tokens")), default=several_texts),
        Column("decode", lambda r: r.get("decode") if other_decode else None, default=other_decode, optional=True),
        Column("status", lambda r: r.get("status"), default=False, left=True),
        Column("MB", _num("model_mb", ".2f"), default=False),
        Column("posts/s", _rate),
        Column("p50 ms", _ms("p50_ms")),
        Column("p90 ms", _ms("p90_ms"), default=False),
        Column("p99 ms", _ms("p99_ms")),
        Column("vs ref", _num("_vs_reference", ".2f", "x")),
        Column("parity", parity_cell),
        Column("max abs diff", _num("max_abs_diff", ".2e"), default=False),
        Column("min cos", _num("cosine", ".6f"), default=False),
        Column("top-1", _num("top1_agreement", ".1f", "%", 100), default=False),
        Column("acc", _num("accuracy", ".4f"), default=False, optional=True),
        Column("Δacc", _num("accuracy_diff", "+.4f"), default=False, optional=True),
        Column("macro-F1", _num("macro_f1", ".4f"), optional=True),
        Column("ΔmF1", _num("macro_f1_diff", "+.4f"), default=False, optional=True),
        Column("w-F1", _num("weighted_f1", ".4f"), default=False, optional=True),
        Column("ΔwF1", _num("weighted_f1_diff", "+.4f"), default=False, optional=True),
        Column("ECE", _num("ece", ".4f"), default=False, optional=True),
        Column("text recipe", lambda r: r.get("text_recipe"), default=False, optional=True),
        Column("flagged", _num("review_share", ".1f", "%", 100), default=False, optional=True),
        Column("failed", _num("failed", "d"), default=False, optional=True),
        Column("invariant", invariance_cell, default=False),
        Column("fast cos", _num("decode_cosine", ".6f"), default=False, optional=True),
        Column("GFLOP/s", _num("gflops", ".2f"), default=False),
        Column("% peak", _num("roofline_pct", ".1f"), default=False),
        Column("cold s", _num("cold_start_s", ".2f"), default=False),
        Column("e2e split", stage_text, default=False, left=True, optional=True),
    ]


def with_reference(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Copies of the rows with `_vs_reference` (throughput over the reference row's at the same batch size,
    text length and decode mode) and `_is_reference`. The reference is the run's parity reference (PyTorch
    where installed), else the first variant that ran."""
    rows = result["rows"]
    reference = result["header"].get("parity_reference") or next(
        (r["choice"] for r in rows if r.get("status") == "ok"), None)
    key = ("batch_size", "text_tokens", "decode")
    speeds = {tuple(r.get(k) for k in key): r["items_per_s"] for r in rows
              if r.get("choice") == reference and r.get("items_per_s")}
    out = []
    for row in rows:
        base = speeds.get(tuple(row.get(k) for k in key))
        ips = row.get("items_per_s")
        out.append({**row, "_is_reference": row.get("choice") == reference and row.get("status") == "ok",
                    "_vs_reference": ips / base if ips and base else None})
    return out


def peak_line(header: dict[str, Any]) -> str:
    """How the roofline was measured: each engine's best MatMul probe, or why it is unknown."""
    peaks = header.get("engine_peaks")
    if not peaks:
        text = "roofline: not measured"
    else:
        parts = [f"{variant} {p['gflops']:.1f} GFLOP/s ({p['probe']}, best of {p['probes']})" if "gflops" in p
                 else f"{variant} n/a ({p['note']})" for variant, p in peaks.items()]
        text = ("roofline (% peak): row GFLOP/s over its engine's best MatMul, probed before the rows and once per "
                "round: " + "; ".join(parts))
    return text + (f"; encoder FLOPs {header['flops_note']}" if header.get("flops_note") else "")


def extra_lines(header: dict[str, Any]) -> list[str]:
    """Task-metric source, decode speed and roofline warnings, where the run has them."""
    lines = []
    labelled = header.get("labelled")
    if labelled:
        lines.append(f"task metrics: {labelled['records']} labelled records of {labelled['source']} (task "
                     f"{labelled['task']}), each row classifies all of them once, untimed; Δ vs "
                     f"{header.get('metric_reference') or 'n/a'}; records that fail are counted and left out")
    speed = header.get("decode_speed")
    if speed and speed.get("fast_speedup"):
        lines.append(f"decode + preprocess on one core ({speed['images']} images, best of {speed['rounds']}): "
                     f"exact {speed['exact_ms_per_image']:.2f} ms, fast {speed['fast_ms_per_image']:.2f} ms per image, "
                     f"fast {speed['fast_speedup']:.2f}x; fast cos = image-embedding cosine of fast vs exact decode")
    lines += [f"WARNING roofline: {w}" for w in header.get("roofline_warnings") or []]
    return lines


def header_lines(header: dict[str, Any], wide: bool = True) -> list[str]:
    """The machine and method, printed above the table (short unless `wide`) and in the Markdown file."""
    gpu = header.get("gpu") or "none"
    machine = (f"CPU: {header.get('cpu')} ({header.get('cpu_count')} CPUs, {header.get('threads')} threads used), "
               f"GPU: {gpu}")
    reference = header.get("parity_reference") or "n/a"
    if not wide:
        load = str(header.get("load_average") or "n/a").split("/")[0]
        return [f"{machine}, load {load}",
                f"workload: {header.get('workload')}, ~{header.get('seconds_per_row')} s per row; vs ref and "
                f"parity against {reference}", f"bundle: {header.get('bundle')}"]
    versions = ", ".join(f"{k} {v}" for k, v in header.get("versions", {}).items() if v)
    lines = [
        f"{machine}, {header.get('os')}, Python {header.get('python')}, load average {header.get('load_average')}",
        f"versions: {versions}",
        peak_line(header),
        f"bundle: {header.get('bundle')}, workload: {header.get('workload')}, inputs: {header.get('inputs')}",
        f"method: {header.get('warmup')} warm-up reps, then ~{header.get('seconds_per_row')} s per row "
        f"interleaved round-robin; {header.get('timing')}; parity and vs ref against {reference}",
    ]
    return lines + extra_lines(header)
