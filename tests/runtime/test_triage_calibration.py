"""Calibration measures (crisis_tool.runtime.triage.calibration) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.triage.calibration import ece, nll, reliability_bins, softmax


def test_softmax_matches_the_formula_and_the_temperature_divides_the_logits() -> None:
    logits = np.array([[1.0, 2.0, 3.0]])
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(softmax(logits), [e / e.sum()], rtol=1e-12)
    e2 = np.exp(np.array([1.0, 2.0, 3.0]) / 2.0)
    np.testing.assert_allclose(softmax(logits, 2.0), [e2 / e2.sum()], rtol=1e-12)


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = softmax(np.array([[1000.0, 999.0], [-1e6, 0.0]]))
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs[0], [1 / (1 + math.exp(-1)), 1 - 1 / (1 + math.exp(-1))], rtol=1e-12)
    np.testing.assert_allclose(probs[1], [0.0, 1.0], atol=1e-300)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_softmax_refuses_a_bad_temperature(temperature: float) -> None:
    with pytest.raises(UsageError, match="temperature"):
        softmax(np.zeros((1, 2)), temperature)


def test_nll_by_hand() -> None:
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]])
    labels = np.array([0, 0, 1])
    assert nll(probs, labels) == pytest.approx(-(math.log(0.8) + math.log(0.4) + math.log(0.5)) / 3, rel=1e-12)


def test_ece_and_bins_by_hand() -> None:
    # Confidences 0.95, 0.94 (bin (14/15, 1]), 0.70 (bin (0.6667, 0.7333]) and 0.55 (bin (0.5333, 0.6]).
    probs = np.array([[0.95, 0.05], [0.06, 0.94], [0.70, 0.30], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 1])  # right, wrong, right, right
    table = reliability_bins(probs, labels, bins=15)
    assert len(table) == 15 and sum(b.count for b in table) == 4
    top = table[14]
    assert (top.lower, top.upper, top.count) == (pytest.approx(14 / 15), 1.0, 2)
    assert top.accuracy == 0.5 and top.confidence == pytest.approx(0.945)
    assert table[10].count == 1 and table[10].accuracy == 1.0 and table[10].confidence == pytest.approx(0.70)
    assert table[8].count == 1 and table[8].confidence == pytest.approx(0.55)
    assert math.isnan(table[0].accuracy) and table[0].count == 0
    expected = 2 / 4 * abs(0.5 - 0.945) + 1 / 4 * abs(1 - 0.70) + 1 / 4 * abs(1 - 0.55)
    assert ece(probs, labels, bins=15) == pytest.approx(expected, rel=1e-12)


def test_a_confidence_on_a_bin_edge_goes_to_the_lower_bin() -> None:
    probs = np.array([[0.6, 0.4]])  # 0.6 = 9/15 exactly: bin (8/15, 9/15]
    table = reliability_bins(probs, np.array([0]), bins=15)
    assert table[8].count == 1


def test_ece_is_zero_when_confidence_equals_accuracy() -> None:
    probs = np.tile([0.75, 0.25], (4, 1))
    assert ece(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [(np.zeros((0, 2)), np.zeros(0, dtype=int), "non-empty"),
     (np.full((2, 2), 0.5), np.array([0]), "labels"),
     (np.full((2, 2), 0.5), np.array([0, 2]), "class indices"),
     (np.full((2, 2), 0.5), np.array([0.0, 1.0]), "class indices")],
)
def test_bad_input_is_a_usage_error(probs: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        ece(probs, labels)
