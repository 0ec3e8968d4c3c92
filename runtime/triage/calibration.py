"""Calibration measures for one classification head: softmax with a temperature, ECE, NLL, reliability bins.

All functions take `probs` as an (N, C) array of class probabilities (rows sum to 1) and `labels` as N integer
class indices. The confidence of a row is its largest probability; a row is correct when that argmax equals its
label (ties go to the lowest class index, as `np.argmax` does).

ECE (expected calibration error) uses equal-width confidence bins over [0, 1]: bin b holds the rows whose
confidence lies in ((b-1)/B, b/B] (bin 1 also holds confidence exactly 0), and

    ECE = sum over non-empty bins of (count_b / N) * |accuracy_b - mean confidence_b|.

This is the usual definition (Guo et al., 2017, "On Calibration of Modern Neural Networks"), 15 bins by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crisis_tool.runtime.errors import UsageError

DEFAULT_BINS = 15
_EPS = 1e-12


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64, stable for large logits."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise UsageError(f"temperature must be a positive finite number, got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0:
        raise UsageError(f"probs must be a non-empty (N, C) array, got shape {p.shape}")
    if y.shape != (p.shape[0],):
        raise UsageError(f"labels must have shape ({p.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise UsageError(f"labels must be integer class indices in [0, {p.shape[1]})")
    return p, y.astype(np.int64)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (natural log; probabilities floored at 1e-12)."""
    p, y = _check(probs, labels)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], _EPS))))


@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-width confidence bin: (lower, upper], its row count, accuracy and mean confidence (NaN if empty)."""

    lower: float
    upper: float
    count: int
    accuracy: float
    confidence: float


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> list[ReliabilityBin]:
    """The `bins` equal-width confidence bins over [0, 1] (see the module docstring), empty ones included."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise UsageError(f"bins must be a positive integer, got {bins!r}")
    p, y = _check(probs, labels)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else float("nan")
        mean_conf = float(conf[mask].mean()) if count else float("nan")
        out.append(ReliabilityBin(b / bins, (b + 1) / bins, count, acc, mean_conf))
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error over `bins` equal-width confidence bins (module docstring), in [0, 1]."""
    table = reliability_bins(probs, labels, bins)
    total = sum(b.count for b in table)
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in table if b.count))
