"""Temperature scaling for one head: fit T on a dev split by minimising NLL, and report ECE/NLL before and after.

The calibrated probabilities are softmax(logits / T) (`crisis_tool.runtime.triage.calibration.softmax`). T > 1
softens an overconfident head, T < 1 sharpens an underconfident one; the argmax, and so the accuracy, never
changes. The NLL of softmax(z / T) is convex in 1/T, so it has one minimum along log T and a golden-section
search over log T in [T_MIN, T_MAX] finds it (to 1e-6 in log T) without scipy. A minimum outside the range
returns the nearer end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.triage.calibration import DEFAULT_BINS, ece, nll, softmax

T_MIN, T_MAX = 0.05, 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_TOL = 1e-6


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise UsageError(f"logits must be a non-empty (N, C>=2) array, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise UsageError("logits contain NaN or infinite values; cannot fit a temperature")
    if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise UsageError(f"labels must be {z.shape[0]} integer class indices in [0, {z.shape[1]})")
    return z, y.astype(np.int64)


def _nll_at(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean NLL of softmax(z / T) computed in log space (exact for tiny probabilities)."""
    s = z / temperature
    top = s.max(axis=1)
    log_norm = top + np.log(np.exp(s - top[:, None]).sum(axis=1))
    return float(np.mean(log_norm - s[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [T_MIN, T_MAX] minimising the NLL of softmax(logits / T) on (logits, labels)."""
    z, y = _check(logits, labels)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = _nll_at(z, y, math.exp(a)), _nll_at(z, y, math.exp(b))
    while hi - lo > _TOL:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = _nll_at(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = _nll_at(z, y, math.exp(b))
    return float(math.exp((lo + hi) / 2.0))


@dataclass(frozen=True)
class CalibrationReport:
    """ECE and NLL of one head on one split, uncalibrated (T = 1) and with `temperature`."""

    temperature: float
    count: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    bins: int = DEFAULT_BINS

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int = DEFAULT_BINS
) -> CalibrationReport:
    """Measure ECE (`bins` equal-width bins) and NLL of (logits, labels) at T = 1 and at `temperature`."""
    z, y = _check(logits, labels)
    raw, cal = softmax(z), softmax(z, temperature)
    return CalibrationReport(
        temperature=float(temperature), count=int(len(y)), ece_before=ece(raw, y, bins), ece_after=ece(cal, y, bins),
        nll_before=nll(raw, y), nll_after=nll(cal, y), bins=bins,
    )
