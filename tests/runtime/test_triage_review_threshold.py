"""The needs-review rule and the dev-split threshold (crisis_tool.runtime.triage.review_threshold), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.triage.review_threshold import (
    FLAG_ALL,
    check_review_threshold,
    choose_review_threshold,
    needs_review,
    review_stats,
)

# Precision of the accepted posts (confidence >= t), by t: 0.95 -> 1/1, 0.9 -> 2/2, 0.8 -> 2/3, 0.7 -> 3/4,
# 0.6 -> 4/5, 0.5 -> 4/6.
CONF = [0.5, 0.95, 0.7, 0.9, 0.6, 0.8]
CORRECT = [False, True, True, True, True, False]


@pytest.mark.parametrize(
    ("target", "expected"),
    [(0.9, 0.9), (1.0, 0.9), (0.85, 0.9), (0.8, 0.6), (0.75, 0.6), (0.66, 0.5)],
)
def test_lowest_confidence_whose_accepted_posts_meet_the_target(target: float, expected: float) -> None:
    assert choose_review_threshold(CONF, CORRECT, target) == expected


def test_equal_confidences_are_accepted_together() -> None:
    # Taking only the first 0.9 would give precision 1.0, but a cut cannot split equal confidences.
    assert choose_review_threshold([0.9, 0.9, 0.8], [True, False, True], 1.0) == FLAG_ALL
    assert choose_review_threshold([0.9, 0.9, 0.8], [True, False, True], 0.6) == 0.8


def test_an_unreachable_target_flags_everything() -> None:
    assert choose_review_threshold([0.9, 0.8], [False, False], 0.5) == FLAG_ALL
    stats = review_stats([0.9, 0.8], [False, False], FLAG_ALL)
    assert stats.flagged == 2 and stats.share_flagged == 1.0 and stats.unflagged_accuracy is None


def test_the_chosen_threshold_meets_the_target_and_no_lower_confidence_does() -> None:
    rng = np.random.default_rng(0)
    conf = rng.random(500).round(2)  # many ties
    correct = rng.random(500) < conf
    t = choose_review_threshold(conf, correct, 0.9)
    assert t <= 1.0
    assert review_stats(conf, correct, t).unflagged_accuracy >= 0.9
    for lower in np.unique(conf[conf < t]):
        assert review_stats(conf, correct, lower).unflagged_accuracy < 0.9


def test_review_stats_by_hand() -> None:
    stats = review_stats(CONF, CORRECT, 0.7)  # flagged: 0.5 and 0.6; kept: 0.95, 0.9, 0.8 (wrong), 0.7
    assert (stats.total, stats.flagged, stats.unflagged, stats.unflagged_correct) == (6, 2, 4, 3)
    assert stats.share_flagged == pytest.approx(2 / 6) and stats.unflagged_accuracy == 0.75
    nothing = review_stats(CONF, CORRECT, 0.0)
    assert nothing.flagged == 0 and nothing.unflagged_accuracy == pytest.approx(4 / 6)


def test_the_rule_flags_below_the_threshold_only() -> None:
    assert needs_review(0.69, 0.7) is True
    assert needs_review(0.7, 0.7) is False
    assert needs_review(0.1, None) is None
    assert needs_review(1.0, FLAG_ALL) is True


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5", True])
def test_a_bad_fixed_threshold_is_a_usage_error(value: object) -> None:
    with pytest.raises(UsageError, match="review threshold"):
        check_review_threshold(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("conf", "correct", "target", "match"),
    [([], [], 0.9, "empty"), ([0.5], [True, False], 0.9, "differ"), ([1.2], [True], 0.9, r"\[0, 1\]"),
     ([0.5], [True], 0.0, "precision target"), ([0.5], [True], 1.1, "precision target")],
)
def test_bad_dev_data_is_a_usage_error(conf: list, correct: list, target: float, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        choose_review_threshold(conf, correct, target)
