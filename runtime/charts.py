"""Small PNG charts drawn with Pillow only (no matplotlib: the runtime stays lean).

line_chart: one line per series (optional log2 x axis); scatter_chart: labelled points;
bar_chart: grouped bars with mean +- std error bars;
heatmap: confusion matrices with the count written in every cell. Each writes a white PNG with a title,
axes, ticks, axis labels and a legend, and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crisis_tool.runtime.atomic_files import atomic_output
from crisis_tool.runtime.errors import UsageError

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
WIDTH, HEIGHT = 960, 600
MARGIN = {"left": 90, "right": 240, "top": 60, "bottom": 80}
AXIS = "#222222"
GRID = "#e6e6e6"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    start = math.floor(lo / step) * step
    ticks = [start + i * step for i in range(int(math.ceil((hi - start) / step - 1e-9)) + 1)]
    return [round(t, 12) for t in ticks]


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.2g}"
    return f"{value:.4g}"


class _Canvas:
    """A white image with a plot rectangle and helpers to map data to pixels."""

    def __init__(self, title: str, width: int = WIDTH, height: int = HEIGHT, margin: Mapping | None = None):
        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font, self.small, self.big = _font(15), _font(13), _font(20)
        m = dict(MARGIN, **(margin or {}))
        self.x0, self.y0 = m["left"], m["top"]
        self.x1, self.y1 = width - m["right"], height - m["bottom"]
        tw, _ = _text_size(self.draw, title, self.big)
        self.draw.text(((width - tw) / 2, 18), title, fill=AXIS, font=self.big)

    def text(self, xy: tuple[float, float], text: str, font: Font | None = None, anchor: str = "la",
             fill: str = AXIS) -> None:
        self.draw.text(xy, text, fill=fill, font=font or self.font, anchor=anchor)

    def vertical_text(self, center: tuple[float, float], text: str, font: Font | None = None) -> None:
        font = font or self.font
        w, h = _text_size(self.draw, text, font)
        label = Image.new("RGBA", (w + 4, h + 8), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((2, 2), text, fill=AXIS, font=font)
        label = label.rotate(90, expand=True)
        self.image.paste(label, (int(center[0] - label.width / 2), int(center[1] - label.height / 2)), label)

    def frame(self, xlabel: str, ylabel: str) -> None:
        self.draw.rectangle((self.x0, self.y0, self.x1, self.y1), outline=AXIS, width=1)
        self.text(((self.x0 + self.x1) / 2, self.y1 + 42), xlabel, anchor="mt")
        self.vertical_text((22, (self.y0 + self.y1) / 2), ylabel)

    def y_axis(self, ticks: Sequence[float], lo: float, hi: float) -> None:
        for t in ticks:
            y = self.ymap(t, lo, hi)
            self.draw.line((self.x0, y, self.x1, y), fill=GRID)
            self.draw.line((self.x0 - 5, y, self.x0, y), fill=AXIS)
            self.text((self.x0 - 8, y), _fmt(t), self.small, anchor="rm")

    def ymap(self, value: float, lo: float, hi: float) -> float:
        return self.y1 - (value - lo) / (hi - lo) * (self.y1 - self.y0)

    def xmap(self, value: float, lo: float, hi: float) -> float:
        return self.x0 + (value - lo) / (hi - lo) * (self.x1 - self.x0)

    def legend(self, names: Sequence[str]) -> None:
        x, y = self.x1 + 18, self.y0 + 4
        for i, name in enumerate(names):
            colour = PALETTE[i % len(PALETTE)]
            self.draw.rectangle((x, y + 3, x + 14, y + 15), fill=colour)
            self.text((x + 22, y), _ellipsize(name, 28), self.small)
            y += 22

    def save(self, path: str | Path) -> Path:
        """Write the PNG atomically (a reader never sees half a chart; a failure leaves the old file)."""
        out = Path(path)
        with atomic_output(out, "wb") as fh:
            self.image.save(fh, format="PNG")
        return out


def _ellipsize(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _padded_range(values: Sequence[float], include_zero: bool = False) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = (hi - lo) * 0.05 or (abs(hi) * 0.1 or 1.0)
    return (lo if include_zero and lo == 0 else lo - pad), hi + pad


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str,
               xlabel: str, ylabel: str, log2_x: bool = False) -> Path:
    """One line with markers per series of (x, y) points; `log2_x` spaces x by log2 (x must be > 0)."""
    points = {name: [(float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
              for name, pts in series.items()}
    every = [p for pts in points.values() for p in pts]
    if not every:
        raise UsageError(f"line chart {title!r}: no finite points to draw")
    if log2_x and any(x <= 0 for x, _ in every):
        raise UsageError(f"line chart {title!r}: a log2 x axis needs x > 0")
    tx = (lambda v: math.log2(v)) if log2_x else (lambda v: v)
    xs, ys = [tx(x) for x, _ in every], [y for _, y in every]
    xlo, xhi = _padded_range(xs)
    yticks = _nice_ticks(*_padded_range(ys))
    ylo, yhi = yticks[0], yticks[-1]
    canvas = _Canvas(title)
    canvas.y_axis(yticks, ylo, yhi)
    if log2_x:
        xticks = [2.0**k for k in range(math.floor(min(xs)), math.ceil(max(xs)) + 1)]
        xticks = [t for t in xticks if xlo <= math.log2(t) <= xhi]
    else:
        xticks = [t for t in _nice_ticks(min(xs), max(xs)) if xlo <= t <= xhi]
    for t in xticks:
        x = canvas.xmap(tx(t), xlo, xhi)
        canvas.draw.line((x, canvas.y0, x, canvas.y1), fill=GRID)
        canvas.draw.line((x, canvas.y1, x, canvas.y1 + 5), fill=AXIS)
        canvas.text((x, canvas.y1 + 8), _fmt(t), canvas.small, anchor="mt")
    canvas.frame(xlabel + (" (log2 scale)" if log2_x else ""), ylabel)
    for i, pts in enumerate(points.values()):
        colour = PALETTE[i % len(PALETTE)]
        pixels = [(canvas.xmap(tx(x), xlo, xhi), canvas.ymap(y, ylo, yhi)) for x, y in sorted(pts)]
        if len(pixels) > 1:
            canvas.draw.line(pixels, fill=colour, width=3, joint="curve")
        for px, py in pixels:
            canvas.draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour, outline="white")
    canvas.legend(list(points))
    return canvas.save(path)


def scatter_chart(points: Mapping[str, tuple[float, float]], path: str | Path, title: str, xlabel: str,
                  ylabel: str) -> Path:
    """One labelled point per name at (x, y), e.g. a bench row's speed against its macro-F1."""
    finite = {name: (float(x), float(y)) for name, (x, y) in points.items() if math.isfinite(x) and math.isfinite(y)}
    if not finite:
        raise UsageError(f"scatter chart {title!r}: no finite points to draw")
    xticks = _nice_ticks(*_padded_range([x for x, _ in finite.values()], include_zero=True))  # speed from 0
    yticks = _nice_ticks(*_padded_range([y for _, y in finite.values()]))
    (xlo, xhi), (ylo, yhi) = (xticks[0], xticks[-1]), (yticks[0], yticks[-1])
    canvas = _Canvas(title)
    canvas.y_axis(yticks, ylo, yhi)
    for t in xticks:
        x = canvas.xmap(t, xlo, xhi)
        canvas.draw.line((x, canvas.y0, x, canvas.y1), fill=GRID)
        canvas.text((x, canvas.y1 + 8), _fmt(t), canvas.small, anchor="mt")
    canvas.frame(xlabel, ylabel)
    for i, (name, (x, y)) in enumerate(finite.items()):
        px, py = canvas.xmap(x, xlo, xhi), canvas.ymap(y, ylo, yhi)
        canvas.draw.ellipse((px - 6, py - 6, px + 6, py + 6), fill=PALETTE[i % len(PALETTE)], outline="white")
        canvas.text((px + 9, py - 7 + 14 * (i % 2)), _ellipsize(name, 22), canvas.small)
    canvas.legend(list(finite))
    return canvas.save(path)


def bar_chart(groups: Mapping[str, Mapping[str, tuple[float, float]]], path: str | Path, title: str,
              ylabel: str) -> Path:
    """Grouped bars: group -> series -> (mean, std); error bars span mean +- std."""
    if not groups or not any(groups.values()):
        raise UsageError(f"bar chart {title!r}: no bars to draw")
    names: list[str] = []
    for bars in groups.values():
        names += [name for name in bars if name not in names]
    values = [(float(m), float(s)) for bars in groups.values() for m, s in bars.values()]
    if not all(math.isfinite(m) and math.isfinite(s) for m, s in values):
        raise UsageError(f"bar chart {title!r}: means and stds must be finite")
    yticks = _nice_ticks(*_padded_range([m - abs(s) for m, s in values] + [m + abs(s) for m, s in values],
                                        include_zero=True))
    ylo, yhi = yticks[0], yticks[-1]
    canvas = _Canvas(title)
    canvas.y_axis(yticks, ylo, yhi)
    canvas.frame("", ylabel)
    slot = (canvas.x1 - canvas.x0) / len(groups)
    bar_w = slot * 0.8 / len(names)
    zero = canvas.ymap(min(max(0.0, ylo), yhi), ylo, yhi)
    for g, (group, bars) in enumerate(groups.items()):
        left = canvas.x0 + g * slot + slot * 0.1
        for i, name in enumerate(names):
            if name not in bars:
                continue
            mean, std = (float(v) for v in bars[name])
            bx0, bx1 = left + i * bar_w + 1, left + (i + 1) * bar_w - 1
            top = canvas.ymap(mean, ylo, yhi)
            canvas.draw.rectangle((bx0, min(top, zero), bx1, max(top, zero)), fill=PALETTE[i % len(PALETTE)])
            if std:
                cx, cap = (bx0 + bx1) / 2, max(bar_w * 0.2, 3)
                hi_y, lo_y = canvas.ymap(mean + abs(std), ylo, yhi), canvas.ymap(mean - abs(std), ylo, yhi)
                canvas.draw.line((cx, hi_y, cx, lo_y), fill=AXIS, width=2)
                canvas.draw.line((cx - cap, hi_y, cx + cap, hi_y), fill=AXIS, width=2)
                canvas.draw.line((cx - cap, lo_y, cx + cap, lo_y), fill=AXIS, width=2)
        limit = max(int(slot / 8), 4)
        canvas.text((canvas.x0 + (g + 0.5) * slot, canvas.y1 + 10), _ellipsize(group, limit), anchor="mt")
    canvas.legend(names)
    return canvas.save(path)


def _cell_colour(fraction: float) -> tuple[int, int, int]:
    """White -> dark blue."""
    low, high = np.array([247, 251, 255]), np.array([8, 48, 107])
    red, green, blue = (int(v) for v in np.round(low + (high - low) * fraction))
    return red, green, blue


def heatmap(matrix: Sequence[Sequence[float]] | np.ndarray, row_labels: Sequence[str],
            col_labels: Sequence[str], path: str | Path, title: str, xlabel: str = "predicted",
            ylabel: str = "true") -> Path:
    """A confusion-matrix style heatmap; each cell shows its value (integers without decimals)."""
    data = np.asarray(matrix, dtype=np.float64)
    if data.ndim != 2 or data.shape != (len(row_labels), len(col_labels)) or data.size == 0:
        raise UsageError(
            f"heatmap {title!r}: matrix shape {data.shape} does not match "
            f"{len(row_labels)} row and {len(col_labels)} column labels"
        )
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_font = _font(13)
    row_w = max(_text_size(probe, _ellipsize(s, 40), label_font)[0] for s in row_labels)
    col_h = max(_text_size(probe, _ellipsize(s, 40), label_font)[0] for s in col_labels)
    cell = max(36, min(90, 640 // max(data.shape)))
    margin = {"left": row_w + 60, "right": 40, "top": 60, "bottom": col_h + 60}
    width = margin["left"] + cell * data.shape[1] + margin["right"]
    height = margin["top"] + cell * data.shape[0] + margin["bottom"]
    title_w = _text_size(probe, title, _font(20))[0] + 40  # the canvas draws its title in a 20 px font
    canvas = _Canvas(title, max(width, 320, title_w), height, margin)
    canvas.x1 = canvas.x0 + cell * data.shape[1]
    finite = data[np.isfinite(data)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    for r in range(data.shape[0]):
        for c in range(data.shape[1]):
            value = data[r, c]
            fraction = min(max(value / top, 0.0), 1.0) if math.isfinite(value) else 0.0
            left, upper = canvas.x0 + c * cell, canvas.y0 + r * cell
            box = (left, upper, left + cell, upper + cell)
            canvas.draw.rectangle(box, fill=_cell_colour(fraction), outline="white")
            text = str(int(value)) if math.isfinite(value) and float(value).is_integer() else _fmt(value)
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            canvas.text(centre, text, canvas.small, anchor="mm", fill="white" if fraction > 0.5 else AXIS)
    for r, label in enumerate(row_labels):
        y = canvas.y0 + (r + 0.5) * cell
        canvas.text((canvas.x0 - 8, y), _ellipsize(label, 40), label_font, anchor="rm")
    for c, label in enumerate(col_labels):
        text = _ellipsize(label, 40)
        w, _ = _text_size(canvas.draw, text, label_font)
        canvas.vertical_text((canvas.x0 + (c + 0.5) * cell, canvas.y1 + 8 + w / 2), text, label_font)
    canvas.draw.rectangle((canvas.x0, canvas.y0, canvas.x1, canvas.y1), outline=AXIS)
    canvas.text(((canvas.x0 + canvas.x1) / 2, canvas.y1 + col_h + 22), xlabel, anchor="mt")
    canvas.vertical_text((22, (canvas.y0 + canvas.y1) / 2), ylabel)
    return canvas.save(path)
