"""PNG charts drawn with matplotlib (the optional `charts` extra; imported only when a chart is drawn).

bench_chart: throughput and p50/p99 latency against batch size per backend (+ speed against macro-F1);
confusion_matrix_png / heatmap: counts with each true class's share; reliability_png: accuracy against
confidence per bin with the posts per bin; line_chart and bar_chart (mean +- std) for the other reports.
Fraction axes (F1, accuracy, confidence) run from 0 to 1. Each chart is written atomically and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.atomic_files import atomic_output
from crisis_tool.runtime.errors import MissingDependencyError, UsageError

INSTALL_HINT = "charts need matplotlib: pip install 'crisis-tool[charts]'"
DPI = 100
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def require_matplotlib(what: str = "charts") -> None:
    """MissingDependencyError (one line, with the install command) when matplotlib is absent."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"{what}: {INSTALL_HINT}") from None


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure that draws off-screen (no pyplot, no global backend switch)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, path: str | Path) -> Path:
    with atomic_output(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI, facecolor="white")
    return Path(path)


def _is_fraction(values: Sequence[float]) -> bool:
    return bool(values) and all(0.0 <= v <= 1.0 for v in values)


def _log2_batch_axis(ax: Any, xs: Sequence[float]) -> None:
    """A log2 x axis with a tick at each batch size actually run."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted(set(xs))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 2, ticks[0] * 2)


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str,
               xlabel: str, ylabel: str, log2_x: bool = False, fraction: bool | None = None) -> Path:
    """One line with markers per series of (x, y) points; `log2_x` spaces x by log2 (x must be > 0). A fraction
    axis (all y in [0, 1] unless `fraction` says otherwise) runs from 0 to 1."""
    points = {name: sorted((float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y))
              for name, pts in series.items()}
    every = [p for pts in points.values() for p in pts]
    if not every:
        raise UsageError(f"line chart {title!r}: no finite points to draw")
    if log2_x and any(x <= 0 for x, _ in every):
        raise UsageError(f"line chart {title!r}: a log2 x axis needs x > 0")
    fig = _figure(9.6, 6.0)
    ax = fig.add_subplot()
    for i, (name, pts) in enumerate(points.items()):
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker=MARKERS[i % len(MARKERS)], label=name)
    if log2_x:
        _log2_batch_axis(ax, [x for x, _ in every])
    if fraction if fraction is not None else _is_fraction([y for _, y in every]):
        ax.set_ylim(0, 1.02)
    ax.set(title=title, xlabel=xlabel + (" (log2 scale)" if log2_x else ""), ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def bar_chart(groups: Mapping[str, Mapping[str, tuple[float, float]]], path: str | Path, title: str,
              ylabel: str, fraction: bool | None = None) -> Path:
    """Grouped bars: group -> series -> (mean, std); error bars span mean +- std. A fraction axis runs 0..1."""
    if not groups or not any(groups.values()):
        raise UsageError(f"bar chart {title!r}: no bars to draw")
    names: list[str] = []
    for bars in groups.values():
        names += [name for name in bars if name not in names]
    values = [(float(m), float(s)) for bars in groups.values() for m, s in bars.values()]
    if not all(math.isfinite(m) and math.isfinite(s) for m, s in values):
        raise UsageError(f"bar chart {title!r}: means and stds must be finite")
    fig = _figure(9.6, 6.0)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g, bars in enumerate(groups.values()) if name in bars]
        means = [float(bars[name][0]) for bars in groups.values() if name in bars]
        stds = [abs(float(bars[name][1])) for bars in groups.values() if name in bars]
        ax.bar(xs, means, width * 0.95, yerr=stds, capsize=4, label=name, color=f"C{i}")
    ax.set_xticks(range(len(groups)), list(groups), rotation=15 if len(groups) > 4 else 0)
    if fraction if fraction is not None else _is_fraction([m + abs(s) for m, s in values] + [m for m, _ in values]):
        ax.set_ylim(0, 1.02)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(fig, path)


def heatmap(matrix: Sequence[Sequence[float]] | np.ndarray, row_labels: Sequence[str],
            col_labels: Sequence[str], path: str | Path, title: str, xlabel: str = "predicted",
            ylabel: str = "true") -> Path:
    """A confusion matrix: each cell shows its count and its share of the row; the colour is that share."""
    data = np.asarray(matrix, dtype=np.float64)
    if data.ndim != 2 or data.shape != (len(row_labels), len(col_labels)) or data.size == 0:
        raise UsageError(
            f"heatmap {title!r}: matrix shape {data.shape} does not match "
            f"{len(row_labels)} row and {len(col_labels)} column labels"
        )
    totals = np.nansum(data, axis=1, keepdims=True)
    share = np.divide(data, totals, out=np.zeros_like(data), where=totals > 0)
    longest = max(len(s) for s in [*row_labels, *col_labels])
    cell = 0.9 if max(data.shape) <= 8 else 0.55
    side = 2.0 + 0.075 * longest
    fig = _figure(max(side + cell * data.shape[1] + 1.5, 0.09 * len(title) + 1), side + cell * data.shape[0])
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label=f"share of the {ylabel} class, 0 to 1", shrink=0.8)
    small = max(data.shape) > 8
    for r in range(data.shape[0]):
        for c in range(data.shape[1]):
            value = data[r, c]
            count = str(int(value)) if math.isfinite(value) and value.is_integer() else f"{value:.3g}"
            text = count if small else f"{count}\n{100 * share[r, c]:.0f}%"
            ax.text(c, r, text, ha="center", va="center", fontsize=7 if small else 9,
                    color="white" if share[r, c] > 0.5 else "black")
    ax.set_xticks(range(len(col_labels)), list(col_labels), rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(row_labels)), list(row_labels))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def confusion_matrix_png(matrix: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[str], path: str | Path,
                         title: str = "confusion matrix") -> Path:
    """The confusion matrix of one task (rows: true class, columns: predicted class)."""
    return heatmap(matrix, labels, labels, path, title)


def _bin_fields(b: Any) -> tuple[float, float, int, float, float]:
    if hasattr(b, "lower"):
        return float(b.lower), float(b.upper), int(b.count), float(b.accuracy), float(b.confidence)
    lower, upper, count, accuracy, confidence = b
    return float(lower), float(upper), int(count), float(accuracy), float(confidence)


def reliability_png(bins: Sequence[Any], path: str | Path, title: str = "reliability diagram") -> Path:
    """Accuracy against mean confidence per confidence bin, the diagonal of perfect calibration, and the posts
    per bin below. `bins`: (lower, upper, count, accuracy, confidence) tuples or objects with those fields
    (crisis_tool.runtime.triage.calibration.reliability_bins); empty bins have count 0."""
    table = [_bin_fields(b) for b in bins]
    total = sum(count for _, _, count, _, _ in table)
    if not table or total == 0:
        raise UsageError(f"reliability diagram {title!r}: no scored posts in any bin")
    full = [b for b in table if b[2] > 0]
    ece = sum(count / total * abs(acc - conf) for _, _, count, acc, conf in full)
    fig = _figure(7.0, 7.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    widths = [upper - lower for lower, upper, *_ in full]
    top.bar([lo for lo, *_ in full], [acc for *_, acc, _ in full], widths, align="edge", color="C0",
            edgecolor="white", label="accuracy in bin")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.plot([conf for *_, conf in full], [acc for *_, acc, _ in full], "o", color="C3", ms=4,
             label="(mean confidence, accuracy) of bin")
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy (fraction correct)",
            title=f"{title}\nECE {ece:.3f} over {total} posts, {len(table)} bins")
    top.legend(loc="best", fontsize="small")
    top.grid(alpha=0.3)
    bottom.bar([lo for lo, *_ in table], [c for _, _, c, _, _ in table], [hi - lo for lo, hi, *_ in table],
               align="edge", color="C7", edgecolor="white")
    bottom.set(xlabel="confidence (max calibrated probability, 0 to 1)", ylabel="posts")
    bottom.yaxis.get_major_locator().set_params(integer=True)
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def _series_name(row: Mapping[str, Any], several_texts: bool, several_decodes: bool) -> str:
    from crisis_tool.runtime.bench.report_lines import backend_cell

    name = backend_cell(row)
    if several_texts:
        name += f", text {row.get('text_tokens')}"
    if several_decodes:
        name += f", {row.get('decode')} decode"
    return name


def bench_chart(result: Mapping[str, Any], path: str | Path) -> Path:
    """Panels side by side, one colour per backend (ok rows only): posts/s against batch size; p50 (solid) and
    p99 (dashed) latency per batch against batch size; with task metrics, posts/s against macro-F1 (marker:
    batch size)."""
    rows = [r for r in result["rows"] if r.get("status") == "ok" and r.get("items_per_s")]
    if not rows:
        raise UsageError(f"--plot {path}: no row ran, nothing to plot")
    several_texts = len({r.get("text_tokens") for r in result["rows"]}) > 1
    several_decodes = len({r.get("decode") for r in result["rows"]}) > 1
    series: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        series.setdefault(_series_name(row, several_texts, several_decodes), []).append(row)
    scored = [r for r in rows if r.get("macro_f1") is not None]
    panels = 3 if scored else 2
    fig = _figure(5.2 * panels, 5.2)
    axes = fig.subplots(1, panels)
    batches = sorted({r["batch_size"] for r in rows})
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts, key=lambda r: r["batch_size"])
        xs = [r["batch_size"] for r in pts]
        axes[0].plot(xs, [r["items_per_s"] for r in pts], marker="o", color=f"C{i}", label=name)
        axes[1].plot(xs, [r["p50_ms"] for r in pts], marker="o", color=f"C{i}")
        axes[1].plot(xs, [r["p99_ms"] for r in pts], marker="x", ls="--", color=f"C{i}")
    for ax in axes[:2]:
        _log2_batch_axis(ax, batches)
        ax.set_xlabel("batch size (posts, log2 scale)")
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="throughput (posts/s)", title="throughput", ylim=(0, None))
    latencies = [r[k] for r in rows for k in ("p50_ms", "p99_ms") if r.get(k)]
    if latencies and max(latencies) / max(min(latencies), 1e-9) > 30:
        axes[1].set_yscale("log")
    else:
        axes[1].set_ylim(0, None)
    log_note = ", log scale" if axes[1].get_yscale() == "log" else ""
    axes[1].set(ylabel=f"latency per batch (ms{log_note})", title="latency: p50 solid, p99 dashed")
    if scored:
        names = list(series)
        for row in scored:
            name = _series_name(row, several_texts, several_decodes)
            marker = MARKERS[batches.index(row["batch_size"]) % len(MARKERS)]
            axes[2].scatter(row["items_per_s"], row["macro_f1"], color=f"C{names.index(name)}", marker=marker, s=60,
                            edgecolors="white", alpha=0.85)
        for j, b in enumerate(batches):
            axes[2].scatter([], [], color="grey", marker=MARKERS[j % len(MARKERS)], label=f"batch {b}")
        axes[2].legend(loc="lower right", fontsize="small", title="marker")
        axes[2].set(xlabel="throughput (posts/s)", ylabel="macro-F1 (0 to 1)", ylim=(0, 1.02), xlim=(0, None),
                    title="speed against macro-F1")
        axes[2].grid(alpha=0.3)
    header = result.get("header", {})
    fig.suptitle(f"crisis-tool bench, {header.get('workload')} workload, {header.get('cpu')}, "
                 f"{header.get('threads')} threads")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(series), 4),
               fontsize="small")
    return _save(fig, path)
