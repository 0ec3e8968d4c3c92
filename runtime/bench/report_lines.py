"""Report parts for the roofline, task metrics and decode modes: header lines and the speed-against-F1 chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crisis_tool.runtime.bench.task_metrics import row_name
from crisis_tool.runtime.charts import scatter_chart
from crisis_tool.runtime.errors import UsageError


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


def speed_vs_f1_chart(result: dict[str, Any], path: str | Path) -> Path:
    """PNG: items/s (x) against macro-F1 (y), one labelled point per ok row with a metric."""
    points = {row_name(r): (float(r["items_per_s"]), float(r["macro_f1"])) for r in result["rows"]
              if r["status"] == "ok" and r.get("items_per_s") and r.get("macro_f1") is not None}
    if not points:
        raise UsageError(f"--plot {path}: no row ran, nothing to plot")
    header = result["header"]
    title = f"speed against macro-F1 ({header.get('workload')}, {header.get('threads')} threads)"
    return scatter_chart(points, path, title, "items/s", "macro-F1")
