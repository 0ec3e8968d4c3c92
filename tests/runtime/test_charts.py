from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crisis_tool.runtime.charts import bar_chart, heatmap, line_chart
from crisis_tool.runtime.errors import UsageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["affected_individuals", "infrastructure_and_utility_damage",
          "rescue_volunteering_or_donation_effort"]


def _open_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and 300 <= img.width <= 2000 and 300 <= img.height <= 2000
        pixels = np.asarray(img.convert("RGB"))
    packed = (pixels[..., 0].astype(np.int64) << 16) | (pixels[..., 1].astype(np.int64) << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 20, "chart looks blank"
    return pixels


def _line(path: Path, shift: float = 0.0, log2_x: bool = True) -> Path:
    series = {
        "guided": [(1, 0.50 + shift), (2, 0.61), (4, 0.70), (8, 0.72), (16, 0.80)],
        "guided-diff": [(1, 0.55), (2, 0.62), (4, 0.74), (8, 0.79), (16, 0.83 - shift)],
    }
    return line_chart(series, path, "macro-F1 vs shots", "shots per class", "macro-F1", log2_x=log2_x)


def _bars(path: Path, std: float = 0.02) -> Path:
    groups = {
        "informative": {"guided": (0.85, std), "guided-diff": (0.87, 0.01)},
        "humanitarian": {"guided": (0.70, 0.03), "guided-diff": (0.74, std)},
    }
    return bar_chart(groups, path, "test macro-F1 over seeds", "macro-F1")


def test_line_chart_writes_a_png_that_depends_on_the_data(tmp_path: Path) -> None:
    a = _open_png(_line(tmp_path / "a.png"))
    b = _open_png(_line(tmp_path / "b.png", shift=0.1))
    same = _open_png(_line(tmp_path / "same.png"))
    linear = _open_png(_line(tmp_path / "nested" / "linear.png", log2_x=False))
    np.testing.assert_array_equal(a, same)
    assert (a != b).any() and (a != linear).any()
    assert (a == [31, 119, 180]).all(axis=-1).sum() > 200  # the first series' colour is drawn


def test_bar_chart_writes_a_png_that_depends_on_the_data(tmp_path: Path) -> None:
    a = _open_png(_bars(tmp_path / "a.png"))
    b = _open_png(_bars(tmp_path / "b.png", std=0.08))
    assert (a != b).any()
    assert (a == [255, 127, 14]).all(axis=-1).sum() > 1000  # the second series' bars


def test_heatmap_writes_a_png_that_depends_on_the_data(tmp_path: Path) -> None:
    matrix = np.array([[50, 3, 1], [4, 40, 0], [2, 5, 61]])
    a = _open_png(heatmap(matrix, LABELS, LABELS, tmp_path / "a.png", "confusion"))
    b = _open_png(heatmap(matrix.T, LABELS, LABELS, tmp_path / "b.png", "confusion"))
    assert a.shape == b.shape and (a != b).any()
    big = _open_png(heatmap(np.ones((12, 12)), [f"c{i}" for i in range(12)], [f"c{i}" for i in range(12)],
                            tmp_path / "big.png", "twelve classes"))
    assert big.shape[0] > 300


def test_bad_inputs_raise_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no finite points"):
        line_chart({"a": []}, tmp_path / "x.png", "t", "x", "y")
    with pytest.raises(UsageError, match="x > 0"):
        line_chart({"a": [(0, 1.0), (1, 2.0)]}, tmp_path / "x.png", "t", "x", "y", log2_x=True)
    with pytest.raises(UsageError, match="no bars"):
        bar_chart({}, tmp_path / "x.png", "t", "y")
    with pytest.raises(UsageError, match="does not match"):
        heatmap(np.ones((2, 3)), ["a", "b"], ["a", "b"], tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


def test_heatmap_widens_for_a_long_title(tmp_path) -> None:
    from PIL import Image

    from crisis_tool.runtime.charts import heatmap

    short = heatmap([[1, 0], [0, 1]], ["a", "b"], ["a", "b"], tmp_path / "s.png", title="cm")
    long = heatmap([[1, 0], [0, 1]], ["a", "b"], ["a", "b"], tmp_path / "l.png", title="x" * 90)
    with Image.open(short) as s, Image.open(long) as lg:
        assert lg.width > s.width and lg.width >= 90 * 8
