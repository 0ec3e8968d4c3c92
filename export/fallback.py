"""The end-to-end fallback: when reduced-precision graphs fail together, leave one more graph in fp32 at a time.

Order (giving up as little speed as possible): the head first, then the text encoder, then the image encoder.
The first combination that passes the end-to-end gate is kept, and each graph's entry says what it ended as and
why. When only all-fp32 would pass, the variant fails, and the report lists every combination tried with its
numbers (`crisis_tool.export.validate.failures` prints them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crisis_tool.export.validate import ParityCase, check_end_to_end

FALLBACK_ORDER = ("head", "text_encoder", "image_encoder")


def combinations(reduced: list[str]) -> list[list[str]]:
    """Graphs left in fp32 per attempt: none, then one more at a time (FALLBACK_ORDER), all-fp32 excluded."""
    attempts: list[list[str]] = []
    for k in range(len(FALLBACK_ORDER) + 1):
        fp32 = [c for c in FALLBACK_ORDER[:k] if c in reduced]
        if len(fp32) == len(reduced):
            break  # all fp32: that is no reduced-precision variant
        if not attempts or attempts[-1] != fp32:
            attempts.append(fp32)
    return attempts


def choose_combination(precision: str, paths: dict[str, Path], fp32_paths: dict[str, Path],
                       entries: dict[str, dict[str, Any]], cases: list[ParityCase]
                       ) -> tuple[dict[str, Path], dict[str, Any]]:
    """(paths kept, end-to-end entry). `entries` (per graph, with `chosen`) are updated for fallbacks.

    The end-to-end entry carries `fallback`: every combination tried, with its numbers. When none passes it is
    the all-reduced attempt's entry, failed.
    """
    reduced = [c for c in paths if entries[c].get("chosen") != "fp32"]
    tried: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    for fp32 in combinations(reduced):
        attempt = {c: fp32_paths[c] if c in fp32 else p for c, p in paths.items()}
        report = check_end_to_end(attempt, cases, precision)
        first = first or report
        tried.append({"fp32": fp32, **{k: report[k] for k in ("top1_agreement", "top1_interval", "min_cosine",
                                                              "max_abs", "n", "passed") if k in report}})
        if report["passed"]:
            for component in fp32:
                entry = entries[component]
                entry["why"] = (f"left fp32 by the end-to-end fallback (quantized as {entry.get('chosen')}, "
                                f"end to end failed: {_numbers(tried[0])})")
                entry["chosen"] = entry["weight_type"] = "fp32"
            return attempt, {**report, "fallback": tried}
    if first is None:  # nothing was reduced: every graph already stays fp32
        report = check_end_to_end(paths, cases, precision)
        return paths, {**report, "passed": False, "fallback": [],
                       "why": "every graph stayed fp32: no reduced-precision graph passed its own gate"}
    return paths, {**first, "passed": False, "fallback": tried}


def _numbers(entry: dict[str, Any]) -> str:
    interval = entry.get("top1_interval")
    ci = f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
    return f"top1 {entry.get('top1_agreement', float('nan')):.6g}{ci} on n={entry.get('n')}"


def describe_attempt(entry: dict[str, Any]) -> str:
    """One attempt of `fallback` as text: which graphs were fp32 and the end-to-end numbers."""
    fp32 = "+".join(entry["fp32"]) if entry["fp32"] else "none"
    verdict = "pass" if entry.get("passed") else "fail"
    return f"fp32={fp32}: {_numbers(entry)}, min_cosine {entry.get('min_cosine', float('nan')):.6g} ({verdict})"
