"""The end-to-end fallback: when reduced-precision graphs fail together, leave one more graph in fp32 at a time.

Every head is gated end to end on its own. Order (giving up as little speed as possible): first the heads
whose end-to-end gate failed (only those: a head that fails fails only itself), then the text encoder, then the
image encoder. The first combination where every head passes is kept, and each graph's entry says what it
ended as and why. When only all-fp32 would pass, the variant fails, and the report lists every combination
tried with its numbers (`crisis_tool.export.validate.failures` prints them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crisis_tool.export.gate_report import attempt_numbers
from crisis_tool.export.validate import ParityCase, check_end_to_end, end_to_end_key
from crisis_tool.runtime.model_spec import IMAGE_ENCODER, TEXT_ENCODER, ModelSpec

ENCODER_FALLBACK_ORDER = (TEXT_ENCODER, IMAGE_ENCODER)
NUMBER_KEYS = ("top1_agreement", "top1_interval", "min_cosine", "max_abs", "n", "passed")


def _failing_heads(spec: ModelSpec, report: dict[str, dict[str, Any]]) -> list[str]:
    return [h.graph for h in spec.heads if not report[end_to_end_key(h)]["passed"]]


def choose_combination(spec: ModelSpec, precision: str, paths: dict[str, Path], fp32_paths: dict[str, Path],
                       entries: dict[str, dict[str, Any]], cases: list[ParityCase]
                       ) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """(paths kept, {end-to-end key: entry} per head). `entries` (per graph, with `chosen`) are updated.

    Each end-to-end entry carries `fallback`: every combination tried, with that head's numbers. When none
    passes, the entries are the all-reduced attempt's, failed.
    """
    reduced = {g for g in paths if entries[g].get("chosen") != "fp32"}
    if not reduced:  # nothing was reduced: every graph already stays fp32
        report = check_end_to_end(spec, paths, cases, precision)
        why = "every graph stayed fp32: no reduced-precision graph passed its own gate"
        return paths, {k: {**v, "passed": False, "fallback": [], "why": why} for k, v in report.items()}
    fp32: list[str] = []
    tried: dict[str, list[dict[str, Any]]] = {}
    first: dict[str, dict[str, Any]] | None = None
    steps = iter(ENCODER_FALLBACK_ORDER)
    while True:
        attempt = {g: fp32_paths[g] if g in fp32 else p for g, p in paths.items()}
        report = check_end_to_end(spec, attempt, cases, precision)
        first = first or report
        for key, entry in report.items():
            tried.setdefault(key, []).append({"fp32": list(fp32), **{k: entry[k] for k in NUMBER_KEYS if k in entry}})
        failing = _failing_heads(spec, report)
        if not failing:
            for graph in fp32:
                entry = entries[graph]
                entry["why"] = (f"left fp32 by the end-to-end fallback (quantized as {entry.get('chosen')}, "
                                f"end to end failed: {attempt_numbers(next(iter(tried.values()))[0])})")
                entry["chosen"] = entry["weight_type"] = "fp32"
            return attempt, {k: {**v, "fallback": tried[k]} for k, v in report.items()}
        new_heads = [g for g in failing if g in reduced and g not in fp32]
        if new_heads:
            fp32 += new_heads
        else:
            nxt = next((g for g in steps if g in reduced), None)
            if nxt is None:
                break
            fp32.append(nxt)
        if set(fp32) >= reduced:
            break  # all fp32: that is no reduced-precision variant
    return paths, {k: {**v, "passed": False, "fallback": tried[k]} for k, v in first.items()}
