"""The roofline of each bench row: its FLOP rate as a share of the peak of the engine it runs on.

Each loaded backend gives its probe through the `Backend.peak_probe()` hook (a large MatMul in the same
session type and precision; see `crisis_tool.runtime.backends.peak_probe`). The probes run a few times before
the rows and then once per round, interleaved with the rows, so they see the same machine; each call is a
burst (one untimed run, then a few timed ones, as a row runs its batches back to back); the peak is the best
probe. A row's `roofline_pct` = 100 x row GFLOP/s / its engine's peak GFLOP/s. The row's work is a mix of
GEMMs and lighter ops, so it cannot beat its engine's best GEMM: a row above 100% is a measurement bug, and is
flagged in `roofline_flag` and the header's `roofline_warnings`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from crisis_tool.runtime.backends.peak_probe import PeakProbe
from crisis_tool.runtime.bench.rows import BackendUnderTest, Row

WARM_PROBES = 3
PROBE_BURST = 4  # timed runs per probe call, after one untimed run that wakes threads and fills caches
OVER_PEAK = "above 100% of the engine's peak: a measurement bug"


@dataclass
class EnginePeak:
    """One backend variant's probe and the best time seen; `note` says why there is no peak."""

    variant: str
    probe: PeakProbe | None = None
    note: str | None = None
    best_s: float = float("inf")
    times: list[float] = field(default_factory=list)

    def __call__(self) -> None:
        """One probe burst: an untimed run (a cold thread pool or cache would time the wake-up, not the
        engine), then PROBE_BURST timed runs back to back, as a bench row runs its batches."""
        if self.probe is None:
            return
        self.probe.run()
        for _ in range(PROBE_BURST):
            start = time.perf_counter()
            self.probe.run()
            elapsed = time.perf_counter() - start
            self.times.append(elapsed)
            self.best_s = min(self.best_s, elapsed)

    @property
    def gflops(self) -> float | None:
        """GFLOP/s of the best probe (None before the first, or without a probe)."""
        return self.probe.flops / self.best_s / 1e9 if self.probe is not None and self.times else None


def make_peak(subject: BackendUnderTest) -> EnginePeak:
    """The subject's engine peak: its backend's probe, or a note (no hook, or the probe failed to build)."""
    peak = EnginePeak(subject.variant)
    if subject.backend is None:
        peak.note = "not loaded"
        return peak
    try:
        peak.probe = subject.backend.peak_probe()
    except Exception as exc:  # noqa: BLE001 - a probe that cannot be built leaves the roofline unknown
        peak.note = f"probe failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return peak
    if peak.probe is None:
        peak.note = f"no peak probe for {subject.name} ({subject.backend.provider})"
    return peak


class EnginePeaks:
    """The peaks of every loaded subject; calling it runs one probe of each (bench's per-round hook)."""

    def __init__(self, subjects: list[BackendUnderTest]) -> None:
        self.peaks = {s.variant: make_peak(s) for s in subjects}

    def warm_up(self, rounds: int = WARM_PROBES) -> None:
        """Probe every engine `rounds` times, interleaved, before the rows."""
        for _ in range(rounds):
            self()

    def __call__(self) -> None:
        for peak in self.peaks.values():
            try:
                peak()
            except Exception as exc:  # noqa: BLE001
                peak.probe, peak.note = None, f"probe failed: {type(exc).__name__}"

    def header(self) -> dict[str, dict[str, Any]]:
        """variant -> {"gflops", "probe", "probes"} or {"note"}: what the header reports."""
        out: dict[str, dict[str, Any]] = {}
        for variant, peak in self.peaks.items():
            if peak.gflops is not None and peak.probe is not None:
                out[variant] = {"gflops": round(peak.gflops, 2), "probe": peak.probe.what, "probes": len(peak.times)}
            else:
                out[variant] = {"note": peak.note or "not measured"}
        return out

    def apply(self, results: list[dict[str, Any]], rows: list[Row]) -> list[str]:
        """Set each row's `roofline_pct` against its engine's peak; returns the over-100% warnings."""
        warnings = []
        for res, row in zip(results, rows, strict=True):
            res["roofline_pct"], res["roofline_flag"] = None, None
            peak = self.peaks.get(row.subject.variant)
            if peak is None or peak.gflops is None or not res.get("gflops"):
                continue
            res["roofline_pct"] = round(100.0 * res["gflops"] / peak.gflops, 2)
            if res["roofline_pct"] > 100.0:
                res["roofline_flag"] = OVER_PEAK
                warnings.append(f"{row.subject.variant} batch {row.batch_size}: {res['roofline_pct']:.1f}% {OVER_PEAK}")
        return warnings
