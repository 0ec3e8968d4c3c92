"""The needs-review rule of one head, and how its threshold is chosen on a dev split.

The rule: a post needs review on a head when its calibrated confidence is **below** the head's threshold
(`confidence < threshold`); posts at or above it are accepted. A head without a threshold (None) flags nothing
and reports `needs_review: null`.

`choose_review_threshold` picks, among the confidences seen on dev, the **lowest** value t for which the accepted
dev posts (confidence >= t) have precision (share correct) >= `target_precision`. The lowest such t accepts the
most posts while meeting the target. Precision need not rise monotonically with t; the rule is still "the
lowest t whose accepted set meets the target", checked at every distinct confidence. When no t reaches the
target (not even the single most confident posts), it returns `FLAG_ALL` (2.0, above any confidence): every
post is flagged. It never returns None, which means "no threshold" in the model spec.

A threshold is only as good as the dev split it was chosen on: a shift in the data (another disaster, another
language) changes the precision the accepted posts really have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crisis_tool.runtime.errors import UsageError

FLAG_ALL = 2.0  # a threshold above every confidence: every post needs review
DEFAULT_TARGET_PRECISION = 0.9


def _arrays(confidences: object, correct: object) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct).reshape(-1)
    if conf.size == 0:
        raise UsageError("cannot choose a review threshold from an empty dev split")
    if ok.shape != conf.shape:
        raise UsageError(f"confidences ({conf.size}) and correct ({ok.size}) differ in length")
    if not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1:
        raise UsageError("confidences must be finite numbers in [0, 1]")
    return conf, ok.astype(bool)


def check_review_threshold(value: float) -> float:
    """`value` as a float if it is a usable fixed threshold (finite, in [0, 1], or FLAG_ALL), else UsageError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"review threshold must be a number in [0, 1], got {value!r}")
    if not (0.0 <= value <= 1.0 or value == FLAG_ALL):
        raise UsageError(f"review threshold must be in [0, 1], got {value!r}")
    return float(value)


def choose_review_threshold(
    confidences: object, correct: object, target_precision: float = DEFAULT_TARGET_PRECISION
) -> float:
    """The lowest dev confidence t with precision(confidence >= t) >= target, else FLAG_ALL (module docstring)."""
    if isinstance(target_precision, bool) or not isinstance(target_precision, (int, float)) or not (
        0.0 < target_precision <= 1.0
    ):
        raise UsageError(f"review precision target must be in (0, 1], got {target_precision!r}")
    conf, ok = _arrays(confidences, correct)
    order = np.argsort(-conf, kind="stable")
    conf_sorted, ok_sorted = conf[order], ok[order]
    accepted = np.arange(1, conf.size + 1)
    precision = np.cumsum(ok_sorted) / accepted
    # Only the last row of each run of equal confidences is a real cut: ties are accepted together.
    cut = np.append(conf_sorted[1:] != conf_sorted[:-1], True)
    meets = cut & (precision >= target_precision - 1e-12)
    if not meets.any():
        return FLAG_ALL
    return float(conf_sorted[np.flatnonzero(meets)[-1]])


def needs_review(confidence: float, threshold: float | None) -> bool | None:
    """The rule for one post on one head: confidence < threshold; None when the head has no threshold."""
    if threshold is None:
        return None
    return bool(confidence < threshold)


@dataclass(frozen=True)
class ReviewStats:
    """How a threshold splits a labelled set: counts, share flagged, and the accuracy of what is not flagged."""

    threshold: float
    total: int
    flagged: int
    unflagged: int
    unflagged_correct: int

    @property
    def share_flagged(self) -> float:
        """Flagged / total."""
        return self.flagged / self.total

    @property
    def unflagged_accuracy(self) -> float | None:
        """Share correct among the unflagged posts; None when every post is flagged."""
        return self.unflagged_correct / self.unflagged if self.unflagged else None


def review_stats(confidences: object, correct: object, threshold: float) -> ReviewStats:
    """Apply `threshold` (flag when confidence < threshold) to a labelled set and count the outcome."""
    conf, ok = _arrays(confidences, correct)
    threshold = check_review_threshold(threshold)
    keep = conf >= threshold
    return ReviewStats(threshold=threshold, total=int(conf.size), flagged=int((~keep).sum()),
                       unflagged=int(keep.sum()), unflagged_correct=int((ok & keep).sum()))
