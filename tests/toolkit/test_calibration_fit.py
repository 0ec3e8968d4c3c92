"""Temperature scaling (crisis_tool.calibration_fit): the fitted T recovers a known overconfidence, and ECE/NLL
on a held-out split go down."""

from __future__ import annotations

import numpy as np
import pytest

from crisis_tool.calibration_fit import T_MAX, T_MIN, calibration_report, fit_temperature
from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.triage.calibration import softmax


def _calibrated_split(rng: np.random.Generator, n: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution: labels are drawn from it."""
    logits = rng.normal(0.0, 1.5, size=(n, classes))
    probs = softmax(logits)
    labels = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    return logits, labels


def test_overconfident_logits_give_the_scale_and_calibration_improves_on_held_out_data() -> None:
    rng = np.random.default_rng(0)
    dev_logits, dev_labels = _calibrated_split(rng, 20000)
    test_logits, test_labels = _calibrated_split(rng, 20000)
    temperature = fit_temperature(4.0 * dev_logits, dev_labels)
    assert temperature == pytest.approx(4.0, rel=0.05)
    report = calibration_report(4.0 * test_logits, test_labels, temperature)
    assert report.ece_after < report.ece_before / 3
    assert report.nll_after < report.nll_before
    assert report.count == 20000 and report.bins == 15


def test_a_calibrated_model_keeps_t_near_1_and_underconfidence_gives_t_below_1() -> None:
    rng = np.random.default_rng(1)
    logits, labels = _calibrated_split(rng, 20000)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)
    assert fit_temperature(0.5 * logits, labels) == pytest.approx(0.5, rel=0.05)


def test_the_fit_is_the_nll_minimum() -> None:
    rng = np.random.default_rng(2)
    logits, labels = _calibrated_split(rng, 3000)
    logits = 2.5 * logits
    best = fit_temperature(logits, labels)
    at_best = calibration_report(logits, labels, best).nll_after
    for other in (best * 0.97, best * 1.03):
        assert calibration_report(logits, labels, other).nll_after > at_best


def test_separable_data_hits_the_lower_bound_and_never_leaves_the_range() -> None:
    logits = np.array([[5.0, -5.0], [-5.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)
    temperature = fit_temperature(logits, labels)
    assert T_MIN <= temperature <= T_MIN * 1.001
    noise = np.array([[0.01, 0.0], [0.0, 0.01]] * 10)
    assert T_MAX / 1.001 <= fit_temperature(noise, np.array([1, 0] * 10)) <= T_MAX


def test_report_dict_has_every_field() -> None:
    rng = np.random.default_rng(3)
    logits, labels = _calibrated_split(rng, 200)
    keys = set(calibration_report(logits, labels, 1.0).to_dict())
    assert keys == {"temperature", "count", "ece_before", "ece_after", "nll_before", "nll_after", "bins"}


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [(np.zeros((0, 2)), np.zeros(0, dtype=int), "non-empty"),
     (np.zeros((3, 1)), np.zeros(3, dtype=int), "C>=2"),
     (np.array([[np.nan, 0.0]]), np.array([0]), "NaN"),
     (np.zeros((2, 2)), np.array([0, 5]), "class indices")],
)
def test_bad_input_is_a_usage_error(logits: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        fit_temperature(logits, labels)
