"""The end-to-end fallback uses every int8 candidate that passed its graph gate, fastest first, before it leaves
a graph fp32; a candidate that failed its graph gate is never tried; the refusal stays a short line per gate.

The graph gates, invariance check and timings are controlled (`int8_candidates` hooks replaced) so that which
candidate passes and which is fastest is known; each candidate's file holds its own name, and the stand-in
end-to-end gate reads the files it is given. One test runs the real export of the tiny run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crisis_tool.export import fallback, int8_candidates
from crisis_tool.export.gate_report import MAX_LINE, failure_details, failures
from crisis_tool.export.int8_candidates import (
    FLOAT_RESIDUAL_CANDIDATE,
    ROWWISE_CANDIDATE,
    STATIC_CANDIDATE,
    candidate_path,
)
from crisis_tool.runtime.model_spec import ModelSpec

FAST, MID, SLOW = FLOAT_RESIDUAL_CANDIDATE, STATIC_CANDIDATE, ROWWISE_CANDIDATE
ONE = ModelSpec.for_tasks([("informative", ["n", "y"])])
THREE = ModelSpec.for_tasks([("informative", ["n", "y"]), ("humanitarian", ["a", "b"]), ("damage", ["x", "z"])])
E2E = "end_to_end:informative"


def _controlled_pick(monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float], gate_fails: set[str]) -> None:
    """pick_int8 with controlled gates: candidate `name` writes its name, fails its graph gate when in
    `gate_fails`, and runs in `seconds[name]` (the fp32 graph in 1 s)."""
    def make(name: str, src: Path, dst: Path, calibration: Any) -> Path:
        dst.write_text(name)
        return dst

    def gate(component: str, path: Path, cases: Any, precision: str) -> dict[str, Any]:
        name = path.read_text() if precision == "int8" else "fp32"
        return {"passed": name not in gate_fails, "min_cosine": 0.9 if name in gate_fails else 0.9995, "n": 8}

    def times(paths: dict[str, Path], feeds: Any, rounds: int = 0) -> dict[str, float]:
        return {name: (1.0 if name == "fp32" else seconds[name]) for name in paths}

    monkeypatch.setattr(int8_candidates, "make_candidate", make)
    monkeypatch.setattr(int8_candidates, "check_graph", gate)
    monkeypatch.setattr(int8_candidates, "invariance_of", lambda *a: {"batch_invariance_max_diff": 0.0,
                                                                       "batch_invariant": True})
    monkeypatch.setattr(int8_candidates, "time_graphs", times)
    monkeypatch.setattr(int8_candidates, "timing_feeds", lambda *a: {"x": np.zeros((3, 1))})


def _variant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spec: ModelSpec, gate_fails: set[str] = frozenset()
             ) -> tuple[dict[str, Path], dict[str, Path], dict[str, dict[str, Any]]]:
    """(int8 paths, fp32 paths, entries) of every graph of `spec`, picked by the controlled pick_int8."""
    _controlled_pick(monkeypatch, {MID: 0.2, FAST: 0.1, SLOW: 0.3}, set(gate_fails))
    paths, fp32, entries = {}, {}, {}
    for graph in spec.graph_names:
        fp32[graph] = tmp_path / f"{graph}.onnx"
        fp32[graph].write_text("fp32")
        paths[graph] = tmp_path / f"{graph}.int8.onnx"
        entries[graph] = int8_candidates.pick_int8(graph, fp32[graph], paths[graph], [], [{"x": np.zeros(1)}])
    return paths, fp32, entries


def _choose(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec, paths: dict[str, Path], fp32: dict[str, Path],
            entries: dict[str, dict[str, Any]], fails: Callable[[str, dict[str, str]], bool]
            ) -> tuple[dict[str, Path], dict[str, Any], list[dict[str, str]]]:
    """choose_combination with an end-to-end gate that fails head `task` while `fails(task, {graph: file text})`;
    also returns every combination the gate saw, as {graph: file text}."""
    seen: list[dict[str, str]] = []

    def end_to_end(spec: ModelSpec, attempt: dict[str, Path], cases: Any, precision: str) -> dict[str, Any]:
        combo = {g: p.read_text() for g, p in attempt.items()}
        seen.append(combo)
        return {f"end_to_end:{h.task}": {"passed": not fails(h.task, combo), "top1_agreement": 0.5, "n": 8}
                for h in spec.heads}

    monkeypatch.setattr(fallback, "check_end_to_end", end_to_end)
    kept, report = fallback.choose_combination(spec, "int8", paths, fp32, entries, [])
    return kept, report, seen


def _scratch(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("*.int8.*.onnx"))


def test_every_passing_candidate_is_kept_fastest_first_and_a_failed_one_is_deleted(monkeypatch, tmp_path):
    _controlled_pick(monkeypatch, {STATIC_CANDIDATE: 0.3, ROWWISE_CANDIDATE: 0.1, FLOAT_RESIDUAL_CANDIDATE: 0.2},
                     gate_fails={ROWWISE_CANDIDATE})
    src, dst = tmp_path / "head.onnx", tmp_path / "head.int8.onnx"
    src.write_text("fp32")
    entry = int8_candidates.pick_int8("head_informative", src, dst, [], [{"x": np.zeros(1)}])
    # made in order static, rowwise, float-residual; rowwise (the fastest) failed its gate: never offered
    assert list(entry["candidates"]) == [STATIC_CANDIDATE, ROWWISE_CANDIDATE, FLOAT_RESIDUAL_CANDIDATE]
    assert entry["passing"] == [FLOAT_RESIDUAL_CANDIDATE, STATIC_CANDIDATE]  # by measured time, not made order
    assert entry["chosen"] == FLOAT_RESIDUAL_CANDIDATE and dst.read_text() == FLOAT_RESIDUAL_CANDIDATE
    assert candidate_path(dst, STATIC_CANDIDATE).read_text() == STATIC_CANDIDATE  # waits for the fallback
    assert not candidate_path(dst, ROWWISE_CANDIDATE).exists()
    assert "seconds" not in entry["candidates"][ROWWISE_CANDIDATE]


def test_second_passing_candidate_is_kept_when_the_fastest_fails_end_to_end(monkeypatch, tmp_path):
    paths, fp32, entries = _variant(monkeypatch, tmp_path, ONE)
    assert entries["head_informative"]["passing"] == [FAST, MID, SLOW]
    kept, report, seen = _choose(monkeypatch, ONE, paths, fp32, entries,
                                 lambda task, combo: combo["head_informative"] == FAST)
    assert [c["head_informative"] for c in seen] == [FAST, MID]
    assert kept["head_informative"] == paths["head_informative"] and kept["head_informative"].read_text() == MID
    entry = entries["head_informative"]
    assert entry["chosen"] == entry["weight_type"] == MID and "end-to-end fallback" in entry["why"]
    assert "candidate 2 of 3" in entry["why"] and FAST in entry["why"]
    assert all(kept[g].read_text() == FAST and entries[g]["chosen"] == FAST for g in ("image_encoder", "text_encoder"))
    assert report[E2E]["passed"] is True
    assert [a["graphs"]["head_informative"] for a in report[E2E]["fallback"]] == [FAST, MID]
    assert [a["fp32"] for a in report[E2E]["fallback"]] == [[], []]
    assert _scratch(tmp_path) == []  # candidates not kept are deleted


def test_candidates_are_tried_fastest_first_then_fp32(monkeypatch, tmp_path):
    paths, fp32, entries = _variant(monkeypatch, tmp_path, ONE)
    kept, report, seen = _choose(monkeypatch, ONE, paths, fp32, entries,
                                 lambda task, combo: combo["head_informative"] != SLOW)
    assert [c["head_informative"] for c in seen] == [FAST, MID, SLOW]
    assert kept["head_informative"].read_text() == SLOW and entries["head_informative"]["chosen"] == SLOW


def test_a_candidate_that_failed_its_graph_gate_is_never_tried(monkeypatch, tmp_path):
    paths, fp32, entries = _variant(monkeypatch, tmp_path, ONE, gate_fails={MID})
    assert all(entry["passing"] == [FAST, SLOW] for entry in entries.values())
    kept, report, seen = _choose(monkeypatch, ONE, paths, fp32, entries,
                                 lambda task, combo: combo["image_encoder"] != "fp32")
    assert all(MID not in combo.values() for combo in seen)
    # the head goes first (its candidates, then fp32), then the text encoder, then the image encoder
    assert [tuple(c.values()) for c in seen] == [
        (FAST, FAST, FAST), (FAST, FAST, SLOW), (FAST, FAST, "fp32"), (FAST, SLOW, "fp32"),
        (FAST, "fp32", "fp32"), (SLOW, "fp32", "fp32"),
    ]
    assert list(seen[0]) == ["image_encoder", "text_encoder", "head_informative"]
    assert report[E2E]["passed"] is False and _scratch(tmp_path) == []  # only all-fp32 would pass: no variant


def test_when_every_candidate_fails_end_to_end_the_head_falls_back_to_fp32(monkeypatch, tmp_path):
    paths, fp32, entries = _variant(monkeypatch, tmp_path, THREE)
    kept, report, seen = _choose(monkeypatch, THREE, paths, fp32, entries,
                                 lambda task, combo: task == "damage" and combo["head_damage"] != "fp32")
    assert [c["head_damage"] for c in seen] == [FAST, MID, SLOW, "fp32"]
    assert kept["head_damage"] == fp32["head_damage"]
    entry = entries["head_damage"]
    assert entry["chosen"] == entry["weight_type"] == "fp32" and "left fp32 by the end-to-end fallback" in entry["why"]
    assert all(entries[g]["chosen"] == FAST and kept[g] == paths[g] for g in THREE.graph_names if g != "head_damage")
    tried = report["end_to_end:damage"]["fallback"]
    assert [a["fp32"] for a in tried] == [[], [], [], ["head_damage"]]
    assert [a["passed"] for a in tried] == [False, False, False, True]
    assert all(e["passed"] for e in report.values()) and _scratch(tmp_path) == []


def test_refusal_is_one_short_line_per_failed_gate_with_every_combination_in_the_details(monkeypatch, tmp_path):
    paths, fp32, entries = _variant(monkeypatch, tmp_path, THREE)
    kept, report, seen = _choose(monkeypatch, THREE, paths, fp32, entries, lambda task, combo: True)
    assert len(seen) > 3  # several candidates per graph were tried before giving up
    parity = {"int8": {**entries, **report,
                       "batch_invariance": {"passed": False, "why": "record 3 moved: " + "0.25, " * 300}}}
    lines = failures(parity)
    assert len(lines) == len(THREE.heads) + 1  # one per failed gate, not one per attempt or candidate
    assert all(len(line) <= MAX_LINE and "\n" not in line for line in lines), lines
    assert all(f"fallback tried {len(seen)} combinations" in line for line in lines[:3])
    assert lines[-1].startswith("int8 batch_invariance: failed (record 3 moved: 0.25") and lines[-1].endswith("...)")
    details = failure_details(parity)
    assert sum(" tried fp32=" in d for d in details) == len(seen) * len(THREE.heads)
    assert any(f"head_damage={MID}" in d for d in details)


def test_export_keeps_a_slower_candidate_that_passes_end_to_end(monkeypatch, tiny_run, tmp_path):
    """Real graphs: the tiny run's fastest int8 head is refused end to end, its next passing candidate is kept."""
    from crisis_tool.export.exporter import export_bundle
    from crisis_tool.export.formats import ExportOptions

    real = fallback.check_end_to_end

    def refusing_the_fastest_head(spec, paths, cases, precision):
        report = real(spec, paths, cases, precision)
        if paths["head_informative"].name == "head_informative.int8.onnx":  # where the fastest waits
            report = {k: {**v, "top1_agreement": 0.5, "passed": False} for k, v in report.items()}
        return report

    monkeypatch.setattr(fallback, "check_end_to_end", refusing_the_fastest_head)
    out = tmp_path / "b"
    export_bundle(ExportOptions(model=tiny_run, out=out, precision="int8", max_batch=4))
    manifest = json.loads((out / "manifest.json").read_text())
    report = manifest["parity"]["int8"]
    head = report["head_informative"]
    assert len(head["passing"]) >= 2, head["candidates"]  # the premise: two candidates passed the head's gate
    assert head["chosen"] == head["weight_type"] == head["passing"][1] and "end-to-end fallback" in head["why"]
    assert head["min_cosine"] == head["candidates"][head["chosen"]]["min_cosine"]
    tried = report[E2E]["fallback"]
    assert [a["graphs"]["head_informative"] for a in tried] == head["passing"][:2]
    assert [a["passed"] for a in tried] == [False, True] and manifest["validated"]["int8"] is True
    assert manifest["graphs"]["int8"]["head_informative"]["file"] == "head_informative.int8.onnx"
    assert (out / "head_informative.int8.onnx").is_file()
    assert not list(out.glob("*.int8.*.onnx"))  # no waiting candidate left in the bundle
