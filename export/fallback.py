"""The end-to-end fallback: when reduced-precision graphs fail together, step one graph at a time towards fp32.

Every head is gated end to end on its own. Each reduced graph has its options in order: the candidates that
passed its own gate, fastest first (`passing` in its entry; int8 only, fp16 has one), then fp32. A candidate
that failed its own gate is never tried. Order of the steps (giving up as little speed as possible): first the
heads whose end-to-end gate failed (only those: a head that fails fails only itself) each move to their next
option, until they are fp32; then the text encoder moves through its options, then the image encoder. Steps
add up: a graph never moves back. The first combination where every head passes is kept; each graph's entry
says what it ended as and why, and each end-to-end entry's `fallback` lists every combination tried (which
candidate per graph) with that head's numbers. When only all-fp32 would pass, the variant fails
(`crisis_tool.export.gate_report.failures` prints one short line per failed gate). Candidates not kept are
deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crisis_tool.export.gate_report import attempt_numbers
from crisis_tool.export.int8_candidates import GATE_KEYS, INVARIANCE_KEYS, candidate_path
from crisis_tool.export.validate import ParityCase, check_end_to_end, end_to_end_key
from crisis_tool.runtime.model_spec import IMAGE_ENCODER, TEXT_ENCODER, ModelSpec

ENCODER_FALLBACK_ORDER = (TEXT_ENCODER, IMAGE_ENCODER)
NUMBER_KEYS = ("top1_agreement", "top1_interval", "min_cosine", "max_abs", "n", "passed")
FP32 = "fp32"


def _failing_heads(spec: ModelSpec, report: dict[str, dict[str, Any]]) -> list[str]:
    return [h.graph for h in spec.heads if not report[end_to_end_key(h)]["passed"]]


def options_of(entry: dict[str, Any]) -> list[str]:
    """A reduced graph's options in the order the fallback tries them: its passing candidates, fastest first
    (the kept one, `chosen`, first), then fp32."""
    passing = [name for name in entry.get("passing") or [] if name != entry["chosen"]]
    return [entry["chosen"], *passing, FP32]


class _Combination:
    """Which option each reduced graph is at, and the paths that gives."""

    def __init__(self, paths: dict[str, Path], fp32_paths: dict[str, Path], entries: dict[str, dict[str, Any]]):
        self.paths, self.fp32_paths, self.entries = paths, fp32_paths, entries
        self.options = {g: options_of(entries[g]) for g in paths if entries[g].get("chosen") != FP32}
        self.at = dict.fromkeys(self.options, 0)
        self.fp32: list[str] = []  # reduced graphs moved to fp32, in the order they moved

    def name(self, graph: str) -> str:
        return self.options[graph][self.at[graph]] if graph in self.options else self.entries[graph]["chosen"]

    def path(self, graph: str) -> Path:
        if graph not in self.options or self.name(graph) == FP32:
            return self.fp32_paths[graph] if graph in self.options else self.paths[graph]
        return self.paths[graph] if self.at[graph] == 0 else candidate_path(self.paths[graph], self.name(graph))

    def movable(self, graph: str) -> bool:
        return graph in self.options and self.name(graph) != FP32

    def step(self, graph: str) -> None:
        self.at[graph] += 1
        if self.name(graph) == FP32:
            self.fp32.append(graph)

    def all_fp32(self) -> bool:
        return not any(self.movable(g) for g in self.options)

    def record(self) -> dict[str, Any]:
        return {"fp32": list(self.fp32), "graphs": {g: self.name(g) for g in self.paths}}


def choose_combination(spec: ModelSpec, precision: str, paths: dict[str, Path], fp32_paths: dict[str, Path],
                       entries: dict[str, dict[str, Any]], cases: list[ParityCase]
                       ) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """(paths kept, {end-to-end key: entry} per head). `entries` (per graph, with `chosen`) are updated.

    Each end-to-end entry carries `fallback`: every combination tried, with that head's numbers. When none
    passes, the entries are the all-fastest attempt's, failed.
    """
    combo = _Combination(paths, fp32_paths, entries)
    if not combo.options:  # nothing was reduced: every graph already stays fp32
        report = check_end_to_end(spec, paths, cases, precision)
        why = "every graph stayed fp32: no reduced-precision graph passed its own gate"
        return paths, {k: {**v, "passed": False, "fallback": [], "why": why} for k, v in report.items()}
    tried: dict[str, list[dict[str, Any]]] = {}
    first: dict[str, dict[str, Any]] | None = None
    while True:
        attempt = {g: combo.path(g) for g in paths}
        report = check_end_to_end(spec, attempt, cases, precision)
        first = first or report
        for key, entry in report.items():
            numbers = {k: entry[k] for k in NUMBER_KEYS if k in entry}
            tried.setdefault(key, []).append({**combo.record(), **numbers})
        failing = _failing_heads(spec, report)
        if not failing:
            return _keep(combo, tried), {k: {**v, "fallback": tried[k]} for k, v in report.items()}
        # the failing heads that can still move, else the first encoder (text, then image) that can
        steps = [g for g in failing if combo.movable(g)] or [g for g in ENCODER_FALLBACK_ORDER if combo.movable(g)][:1]
        if not steps:
            break
        for graph in steps:
            combo.step(graph)
        if combo.all_fp32():
            break  # all fp32: that is no reduced-precision variant
    _delete_unkept(combo)
    return paths, {k: {**v, "passed": False, "fallback": tried[k]} for k, v in first.items()}


def _keep(combo: _Combination, tried: dict[str, list[dict[str, Any]]]) -> dict[str, Path]:
    """Put each graph's kept candidate at its path, delete the others, say in its entry what it ended as, and
    return the paths kept."""
    first = [attempts[0] for attempts in tried.values()]
    failed_first = attempt_numbers(next((a for a in first if not a["passed"]), first[0]))
    for graph, options in combo.options.items():
        entry, at, name = combo.entries[graph], combo.at[graph], combo.name(graph)
        if at == 0:
            continue
        skipped = ", ".join(options[:at])
        if name == FP32:
            entry["why"] = (f"left fp32 by the end-to-end fallback (end to end failed with {skipped}: "
                            f"first try {failed_first})")
            entry["chosen"] = entry["weight_type"] = FP32
            continue
        candidate_path(combo.paths[graph], name).replace(combo.paths[graph])
        numbers = entry["candidates"][name]
        entry.update({k: numbers[k] for k in (*GATE_KEYS, *INVARIANCE_KEYS) if k in numbers})
        entry["why"] = (f"passing candidate {at + 1} of {len(options) - 1} by speed, kept by the end-to-end "
                        f"fallback (end to end failed with {skipped}: first try {failed_first})")
        entry["chosen"] = entry["weight_type"] = name
    _delete_unkept(combo)
    return {g: combo.fp32_paths[g] if g in combo.fp32 else combo.paths[g] for g in combo.paths}


def _delete_unkept(combo: _Combination) -> None:
    """Delete the waiting candidate files of every graph (the kept one is at the graph's own path by now)."""
    for graph, options in combo.options.items():
        for name in options[1:-1]:
            candidate_path(combo.paths[graph], name).unlink(missing_ok=True)
