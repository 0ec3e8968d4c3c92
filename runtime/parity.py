"""Parity maths, in one place: cosine, max |diff|, top-1 agreement with its Wilson interval, and the gate verdict.

Used by the export gates (graphs, end to end, engines), bench's parity columns and the decode-mode check.
Every number is computed in float64; a report records `n`, the samples compared.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crisis_tool.runtime.model_spec import Tolerance


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine similarity of two [N, D] arrays."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.min(np.sum(a64 * b64, axis=1) / np.maximum(denom, 1e-30)))


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute element-wise difference of two arrays of one shape."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"cannot compare shapes {a64.shape} and {b64.shape}")
    return float(np.max(np.abs(a64 - b64))) if a64.size else 0.0


def wilson_interval(agree: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion agree/n (sound at 0/n and n/n, unlike the normal one)."""
    if n <= 0:
        return 0.0, 1.0
    p = agree / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if agree == 0 else max(0.0, centre - half)
    hi = 1.0 if agree == n else min(1.0, centre + half)
    return lo, hi


def top1_agreement(got: np.ndarray, ref: np.ndarray) -> float:
    """The fraction of rows whose arg-max agrees."""
    return float(np.mean(np.argmax(got, axis=1) == np.argmax(ref, axis=1))) if len(got) else 0.0


def top1_numbers(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of two logit arrays with its 95% Wilson interval."""
    agree, n = int(np.sum(np.argmax(got, axis=1) == np.argmax(ref, axis=1))), int(got.shape[0])
    return {"top1_agreement": agree / n if n else 0.0, "top1_interval": wilson_interval(agree, n)}


def compare(outs: list[np.ndarray], refs: list[np.ndarray], logits: bool) -> dict[str, Any]:
    """max |diff|, min cosine and n (plus top-1 with its interval for logits) of outputs against references."""
    got, ref = np.concatenate(outs), np.concatenate(refs)
    numbers: dict[str, Any] = {"max_abs": max_abs(got, ref), "min_cosine": min_cosine(got, ref),
                               "n": int(got.shape[0])}
    if logits:
        numbers |= top1_numbers(got, ref)
    return numbers


def passes(numbers: dict[str, Any], tol: Tolerance) -> bool:
    """True when every limit the tolerance sets holds (top-1 is gated on its point value)."""
    ok = True
    if tol.max_abs is not None:
        ok &= numbers["max_abs"] <= tol.max_abs
    if tol.min_cosine is not None:
        ok &= numbers["min_cosine"] >= tol.min_cosine
    if tol.min_top1 is not None:
        ok &= numbers["top1_agreement"] >= tol.min_top1
    return bool(ok)


def judge(numbers: dict[str, Any], tol: Tolerance) -> dict[str, Any]:
    """`numbers` rounded, with the gate's limits and `passed`."""
    limits = {k: v for k, v in vars(tol).items() if v is not None}
    return {k: _round(v) for k, v in numbers.items()} | {"limits": limits, "passed": passes(numbers, tol)}


def violations(entry: dict[str, Any]) -> list[str]:
    """Each broken limit of a judged entry as text, e.g. 'min_cosine 0.9981 < 0.999'."""
    limits = entry.get("limits", {})
    checks = (("max_abs", "max_abs", ">"), ("min_cosine", "min_cosine", "<"), ("min_top1", "top1_agreement", "<"))
    return [
        f"{key} {entry[key]:.6g} {op} {limits[limit]:.6g}"
        for limit, key, op in checks
        if limit in limits and key in entry
        and (entry[key] > limits[limit] if op == ">" else entry[key] < limits[limit])
    ]


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, tuple):
        return [_round(v) for v in value]
    return value
