"""PNG charts (matplotlib): files a person can open, that depend on the data, with fraction axes 0..1; a one-line
install hint without matplotlib; and the runtime never importing matplotlib until a chart is drawn."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from crisis_tool.runtime.charts import (  # noqa: E402
    bar_chart,
    bench_chart,
    confusion_matrix_png,
    heatmap,
    line_chart,
    reliability_png,
)
from crisis_tool.runtime.errors import UsageError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["affected_individuals", "infrastructure_and_utility_damage",
          "rescue_volunteering_or_donation_effort"]
BLUE = (31, 119, 180)  # matplotlib's first colour, C0
ORANGE = (255, 127, 14)  # C1


def _open_png(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and 300 <= img.width <= 2000 and 300 <= img.height <= 2000
        if size is not None:
            assert img.size == size
        pixels = np.asarray(img.convert("RGB"))
    packed = (pixels[..., 0].astype(np.int64) << 16) | (pixels[..., 1].astype(np.int64) << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 20, "chart looks blank"
    return pixels


def _count(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 6) -> int:
    return int((np.abs(pixels.astype(int) - colour).sum(axis=2) <= tolerance).sum())


def _line(path: Path, shift: float = 0.0, log2_x: bool = True) -> Path:
    series = {
        "guided": [(1, 0.50 + shift), (2, 0.61), (4, 0.70), (8, 0.72), (16, 0.80)],
        "guided-diff": [(1, 0.55), (2, 0.62), (4, 0.74), (8, 0.79), (16, 0.83 - shift)],
    }
    return line_chart(series, path, "macro-F1 vs shots", "shots per class", "macro-F1", log2_x=log2_x)


def _bench_result(metrics: bool) -> dict:
    rows = []
    for i, choice in enumerate(("onnxruntime", "onnxruntime-int8")):
        for batch in (1, 8, 32):
            row = {"choice": choice, "precision": "int8" if i else "fp32", "status": "ok", "batch_size": batch,
                   "text_tokens": "real", "decode": "exact", "items_per_s": 20.0 * (i + 1) * batch ** 0.5,
                   "p50_ms": 10.0 * batch, "p99_ms": 14.0 * batch}
            if metrics:
                row["macro_f1"] = 0.8 - 0.02 * i
            rows.append(row)
    rows.append({"choice": "tensorrt", "precision": "fp32", "status": "unavailable: no GPU", "batch_size": 1,
                 "items_per_s": None})
    return {"header": {"workload": "e2e", "cpu": "test CPU", "threads": 2}, "rows": rows}


def test_line_chart_writes_a_png_that_depends_on_the_data(tmp_path: Path) -> None:
    a = _open_png(_line(tmp_path / "a.png"), size=(960, 600))
    b = _open_png(_line(tmp_path / "b.png", shift=0.1))
    same = _open_png(_line(tmp_path / "same.png"))
    linear = _open_png(_line(tmp_path / "nested" / "linear.png", log2_x=False))
    np.testing.assert_array_equal(a, same)
    assert (a != b).any() and (a != linear).any()
    assert _count(a, BLUE) > 200  # the first series' line is drawn


def test_fraction_axes_stop_at_one(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    seen: list[tuple[float, float]] = []
    original = Figure.savefig

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.extend(ax.get_ylim() for ax in self.axes)
        return original(self, *args, **kwargs)

    Figure.savefig = spy
    try:
        _line(tmp_path / "f1.png")
        bar_chart({"informative": {"guided": (0.85, 0.02)}}, tmp_path / "bars.png", "macro-F1", "macro-F1")
        line_chart({"speed": [(1, 12.0), (8, 95.0)]}, tmp_path / "speed.png", "speed", "batch", "posts/s")
    finally:
        Figure.savefig = original
    f1, bars, speed = seen
    assert f1 == pytest.approx((0.0, 1.02)) and bars == pytest.approx((0.0, 1.02))
    assert speed[1] > 90  # not a fraction: the axis follows the data


def test_bar_chart_writes_a_png_that_depends_on_the_data(tmp_path: Path) -> None:
    groups = {"informative": {"guided": (0.85, 0.02), "guided-diff": (0.87, 0.01)},
              "humanitarian": {"guided": (0.70, 0.03), "guided-diff": (0.74, 0.02)}}
    a = _open_png(bar_chart(groups, tmp_path / "a.png", "test macro-F1 over seeds", "macro-F1"))
    groups["humanitarian"]["guided-diff"] = (0.40, 0.08)
    b = _open_png(bar_chart(groups, tmp_path / "b.png", "test macro-F1 over seeds", "macro-F1"))
    assert (a != b).any() and _count(a, ORANGE) > 1000  # the second series' bars


def test_confusion_matrix_png_depends_on_the_data(tmp_path: Path) -> None:
    matrix = np.array([[50, 3, 1], [4, 40, 0], [2, 5, 61]])
    a = _open_png(confusion_matrix_png(matrix, LABELS, tmp_path / "a.png", "confusion"))
    b = _open_png(confusion_matrix_png(matrix.T, LABELS, tmp_path / "b.png", "confusion"))
    assert a.shape == b.shape and (a != b).any()
    big = _open_png(heatmap(np.ones((12, 12)), [f"c{i}" for i in range(12)], [f"c{i}" for i in range(12)],
                            tmp_path / "big.png", "twelve classes"))
    assert big.shape[0] > 300


def test_reliability_png_from_bins(tmp_path: Path) -> None:
    bins = [(i / 10, (i + 1) / 10, 10 * i, min(1.0, i / 10 + 0.05), i / 10 + 0.05) for i in range(10)]
    a = _open_png(reliability_png(bins, tmp_path / "a.png", "informative / dev"), size=(700, 750))
    shifted = [(lo, hi, n, acc * 0.5, conf) for lo, hi, n, acc, conf in bins]
    b = _open_png(reliability_png(shifted, tmp_path / "b.png", "informative / dev"))
    assert (a != b).any() and _count(a, BLUE) > 2000  # accuracy bars

    class Bin:  # the objects crisis_tool.runtime.triage.calibration.reliability_bins returns
        def __init__(self, lower, upper, count, accuracy, confidence):  # noqa: ANN001, ANN204
            self.lower, self.upper, self.count, self.accuracy, self.confidence = lower, upper, count, accuracy, \
                confidence

    c = _open_png(reliability_png([Bin(*b) for b in bins], tmp_path / "c.png", "informative / dev"))
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("metrics", [False, True])
def test_bench_chart_panels(tmp_path: Path, metrics: bool) -> None:
    pixels = _open_png(bench_chart(_bench_result(metrics), tmp_path / "bench.png"))
    assert pixels.shape[1] == (1560 if metrics else 1040)  # one 520 px panel per chart
    assert _count(pixels, BLUE) > 300 and _count(pixels, ORANGE) > 300  # one colour per backend


def test_bad_inputs_raise_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no finite points"):
        line_chart({"a": []}, tmp_path / "x.png", "t", "x", "y")
    with pytest.raises(UsageError, match="x > 0"):
        line_chart({"a": [(0, 1.0), (1, 2.0)]}, tmp_path / "x.png", "t", "x", "y", log2_x=True)
    with pytest.raises(UsageError, match="no bars"):
        bar_chart({}, tmp_path / "x.png", "t", "y")
    with pytest.raises(UsageError, match="does not match"):
        heatmap(np.ones((2, 3)), ["a", "b"], ["a", "b"], tmp_path / "x.png", "t")
    with pytest.raises(UsageError, match="no scored posts"):
        reliability_png([(0.0, 0.5, 0, float("nan"), float("nan"))], tmp_path / "x.png")
    with pytest.raises(UsageError, match="no row ran"):
        bench_chart({"header": {}, "rows": [{"status": "unavailable: x", "items_per_s": None}]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_missing_matplotlib_gives_a_one_line_install_hint(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")  # a bundle as far as the checks before the work go
    done = _python(f"""
        import sys
        sys.modules["matplotlib"] = None  # `import matplotlib` now raises ImportError
        from crisis_tool.cli import run
        code = run(["bench", "--bundle", {str(tmp_path)!r}, "--plot", {str(tmp_path / "b.png")!r}])
        from crisis_tool.runtime.charts import heatmap
        try:
            heatmap([[1]], ["a"], ["a"], {str(tmp_path / "h.png")!r}, "t")
        except Exception as exc:
            print("raised", type(exc).__name__, exc)
        sys.exit(code)
    """)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors == ["error: --plot: charts need matplotlib: pip install 'crisis-tool[charts]'"]
    assert done.stdout.strip() == ("raised MissingDependencyError charts need matplotlib: "
                                   "pip install 'crisis-tool[charts]'")
    assert not list(tmp_path.glob("*.png"))


def test_runtime_and_cli_do_not_import_matplotlib_until_a_chart_is_drawn() -> None:
    done = _python("""
        import sys
        import crisis_tool.runtime.charts, crisis_tool.runtime.bench.report, crisis_tool.cli
        print("matplotlib" in sys.modules)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
