"""int8 / fp16 variants and their gates: the pinned gate constants, per-graph candidates picked by speed among
those that pass, the end-to-end fp32 fallback, the failure that lists every attempt, and --force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from crisis_tool.export import fallback
from crisis_tool.export.formats import ExportOptions
from crisis_tool.export.int8_candidates import ROWWISE_CANDIDATE, UNCALIBRATED_CANDIDATES
from crisis_tool.export.validate import END_TO_END as VALIDATE_E2E
from crisis_tool.export.validate import judge, wilson_interval
from crisis_tool.runtime.errors import CrisisToolError
from crisis_tool.runtime.model_spec import END_TO_END, HEAD_GATE, IMAGE_GRAPH, TEXT_GRAPH, ModelSpec, Tolerance

GRAPHS = ("image_encoder", "text_encoder", "head_informative")
E2E = "end_to_end:informative"


def _export(run: Path, out: Path, precision: str = "int8", **kw) -> dict:
    from crisis_tool.export.exporter import export_bundle

    export_bundle(ExportOptions(model=run, out=out, precision=precision, max_batch=4, **kw))
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def int8_manifest(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gates") / "int8"
    return out, _export(tiny_run, out)


# ---------------------------------------------------------------- the gate constants are what the README promises
def test_gate_constants_are_pinned():
    assert VALIDATE_E2E is END_TO_END  # the gates use the runtime's model spec
    head = ModelSpec.for_tasks([("damage", ["a", "b", "c"])]).heads[0].graph_spec()
    for graph in (IMAGE_GRAPH, TEXT_GRAPH):
        assert graph.tolerance("int8") == Tolerance(min_cosine=0.999)
        assert graph.tolerance("fp16") == Tolerance(min_cosine=0.999)
        assert graph.tolerance("fp32") == Tolerance(min_cosine=0.99999)
    assert head.tolerance("fp32") == Tolerance(max_abs=1e-4, min_top1=1.0) and head.tolerances == HEAD_GATE
    assert END_TO_END["fp32"] == Tolerance(max_abs=1e-4, min_top1=1.0)
    for precision in ("int8", "fp16"):
        assert head.tolerance(precision) == Tolerance(min_top1=0.99)
        assert END_TO_END[precision] == Tolerance(min_top1=0.99)


@pytest.mark.parametrize(("numbers", "tol", "passed"), [
    ({"min_cosine": 0.999}, Tolerance(min_cosine=0.999), True),
    ({"min_cosine": 0.99899}, Tolerance(min_cosine=0.999), False),
    ({"top1_agreement": 0.99}, Tolerance(min_top1=0.99), True),
    ({"top1_agreement": 0.9899}, Tolerance(min_top1=0.99), False),
    ({"max_abs": 1e-4, "top1_agreement": 1.0}, Tolerance(max_abs=1e-4, min_top1=1.0), True),
    ({"max_abs": 1.1e-4, "top1_agreement": 1.0}, Tolerance(max_abs=1e-4, min_top1=1.0), False),
    ({"max_abs": 0.0, "top1_agreement": 67 / 68}, Tolerance(max_abs=1e-4, min_top1=1.0), False),
])
def test_judge_applies_each_limit(numbers, tol, passed):
    assert judge(numbers, tol)["passed"] is passed


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.72246, abs=1e-4) and hi == 1.0
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27754, abs=1e-4)
    lo, hi = wilson_interval(67, 68)  # the "one flipped record out of 68"
    assert lo == pytest.approx(0.92129, abs=1e-3) and hi == pytest.approx(0.99740, abs=1e-3)


# ---------------------------------------------------------------- int8: candidates, timing, the fastest kept
def test_int8_keeps_the_fastest_passing_candidate(int8_manifest):
    out, manifest = int8_manifest
    assert manifest["precision"] == "int8" and manifest["validated"]["int8"] is True and not manifest["forced"]
    report = manifest["parity"]["int8"]
    for graph in GRAPHS:
        entry = report[graph]
        assert entry["passed"] and entry["calibration"] == "generated" and entry["n"] == 1 + 3 + 4
        # batch-invariant candidates only (no --calib-data: the calibration-free per-row one first); a later one
        # only when the ones before it fail
        assert entry["candidates"] and set(entry["candidates"]) <= set(UNCALIBRATED_CANDIDATES)
        assert next(iter(entry["candidates"])) == ROWWISE_CANDIDATE
        assert all(v["batch_invariant"] for v in entry["candidates"].values() if v["passed"])
        assert entry["fp32_seconds"] > 0
        timed = {k: v["seconds"] for k, v in entry["candidates"].items() if v["passed"]}
        assert all("seconds" not in v for v in entry["candidates"].values() if not v["passed"])
        if entry["chosen"] == "fp32":
            assert not timed and entry["why"].startswith("no int8 candidate passed")
            assert manifest["graphs"]["int8"][graph]["file"] == f"{graph}.onnx"  # shares the fp32 file
        else:
            assert entry["chosen"] == min(timed, key=timed.get) and entry["weight_type"] == entry["chosen"]
            assert manifest["graphs"]["int8"][graph]["file"] == f"{graph}.int8.onnx"
            assert (out / f"{graph}.int8.onnx").is_file()
    lo, hi = report["head_informative"]["top1_interval"]
    assert lo <= report["head_informative"]["top1_agreement"] <= hi
    assert report[E2E]["fallback"][0]["fp32"] == []
    assert not list(out.glob("*.static-*"))  # candidates are scratch
    quantized = sorted(out.glob("*.int8.onnx"))
    assert quantized  # at least the head is int8 on the tiny model
    for path in quantized:  # static or per-row scales only: nothing computes an activation scale per batch
        ops = {n.op_type for n in onnx.load(path).graph.node}
        assert ops & {"QuantizeLinear", "MatMulInteger"} and "DynamicQuantizeLinear" not in ops, path.name


def test_graph_failing_every_candidate_stays_fp32(monkeypatch, tiny_run, tmp_path):
    monkeypatch.setitem(IMAGE_GRAPH.tolerances, "int8", Tolerance(min_cosine=1.5))
    manifest = _export(tiny_run, tmp_path / "b")
    entry = manifest["parity"]["int8"]["image_encoder"]
    assert entry["chosen"] == "fp32" and "no int8 candidate passed its gate" in entry["why"]
    assert all(not c["passed"] for c in entry["candidates"].values())
    assert manifest["graphs"]["int8"]["image_encoder"]["file"] == "image_encoder.onnx"
    assert manifest["validated"]["int8"] is True


# ---------------------------------------------------------------- the end-to-end fallback
THREE = ModelSpec.for_tasks([("informative", ["n", "y"]), ("humanitarian", ["a", "b"]), ("damage", ["x", "z"])])


def _fake_end_to_end(fails):
    """check_end_to_end stand-in: head `task` fails while `fails(task, fp32 graphs)` is true."""
    def check(spec, paths, cases, precision):
        fp32 = sorted(g for g, p in paths.items() if not p.name.endswith(".int8.onnx"))
        return {f"end_to_end:{h.task}": {"passed": not fails(h.task, fp32), "top1_agreement": 0.5, "n": 8}
                for h in spec.heads}
    return check


def _choose(monkeypatch, fails):
    monkeypatch.setattr(fallback, "check_end_to_end", _fake_end_to_end(fails))
    graphs = THREE.graph_names
    paths = {g: Path(f"{g}.int8.onnx") for g in graphs}
    fp32 = {g: Path(f"{g}.onnx") for g in graphs}
    entries = {g: {"chosen": "static"} for g in graphs}
    kept, report = fallback.choose_combination(THREE, "int8", paths, fp32, entries, [])
    return kept, report, entries


def test_a_head_that_fails_falls_back_alone(monkeypatch):
    kept, report, entries = _choose(monkeypatch, lambda task, fp32: task == "damage" and "head_damage" not in fp32)
    assert kept["head_damage"].name == "head_damage.onnx"
    assert all(kept[g].name.endswith(".int8.onnx") for g in THREE.graph_names if g != "head_damage")
    assert [t["fp32"] for t in report["end_to_end:damage"]["fallback"]] == [[], ["head_damage"]]
    assert entries["head_damage"]["chosen"] == "fp32" and entries["head_informative"]["chosen"] == "static"
    assert all(entry["passed"] for entry in report.values())


def test_encoders_fall_back_text_first_then_image(monkeypatch):
    kept, report, _ = _choose(monkeypatch, lambda task, fp32: "image_encoder" not in fp32)
    tried = [t["fp32"] for t in report["end_to_end:informative"]["fallback"]]
    heads = ["head_informative", "head_humanitarian", "head_damage"]
    assert tried == [[], heads, [*heads, "text_encoder"]]  # then all fp32: no variant at all
    assert not any(entry["passed"] for entry in report.values())
    assert all(p.name.endswith(".int8.onnx") for p in kept.values())  # the failed attempt's paths, marked failed


def test_end_to_end_failure_falls_back_to_fp32_head(monkeypatch, tiny_run, tmp_path, capsys):
    real = fallback.check_end_to_end

    def failing_with_int8_head(spec, paths, cases, precision):
        report = real(spec, paths, cases, precision)
        if ".int8." in paths["head_informative"].name:  # every int8 candidate of the head, not only the fastest
            report = {k: {**v, "top1_agreement": 0.5, "passed": False} for k, v in report.items()}
        return report

    monkeypatch.setattr(fallback, "check_end_to_end", failing_with_int8_head)
    out = tmp_path / "b"
    manifest = _export(tiny_run, out)
    report = manifest["parity"]["int8"]
    tried = report[E2E]["fallback"]
    n_passing = len(report["head_informative"]["passing"])  # each passing candidate is tried, then fp32
    assert [t["fp32"] for t in tried] == [[]] * n_passing + [["head_informative"]]
    assert [t["passed"] for t in tried] == [False] * n_passing + [True]
    assert report["head_informative"]["chosen"] == "fp32"
    assert "end-to-end fallback" in report["head_informative"]["why"]
    assert manifest["graphs"]["int8"]["head_informative"]["file"] == "head_informative.onnx"
    assert not (out / "head_informative.int8.onnx").exists()
    assert manifest["validated"]["int8"] is True


def test_only_all_fp32_passing_fails_with_a_short_line_per_gate(monkeypatch, tiny_run, tmp_path):
    monkeypatch.setitem(END_TO_END, "int8", Tolerance(min_top1=1.5))
    out = tmp_path / "nested" / "b"
    out.parent.mkdir()
    with pytest.raises(CrisisToolError) as info:
        _export(tiny_run, out)
    lines = str(info.value).splitlines()
    assert "parity gate failed" in lines[0]
    assert any(f"int8 {E2E}: top1_agreement" in line and "< 1.5" in line for line in lines[1:])
    assert all(len(line) <= 200 for line in lines), lines
    assert not out.exists() and not list(out.parent.iterdir())  # nothing written, no temp dir left


def test_force_writes_bundle_marked_forced(monkeypatch, tiny_run, tmp_path):
    monkeypatch.setitem(END_TO_END, "int8", Tolerance(min_top1=1.5))
    manifest = _export(tiny_run, tmp_path / "forced", force=True)
    assert manifest["forced"] is True and manifest["validated"]["int8"] is False
    assert manifest["parity"]["int8"][E2E]["passed"] is False
    assert manifest["parity"]["int8"][E2E]["fallback"]  # every attempt is recorded


def test_fp16_variant_keeps_norms_in_fp32(tiny_run, tmp_path):
    out = tmp_path / "fp16"
    manifest = _export(tiny_run, out, precision="fp16")
    validated = manifest["validated"]["fp16"]
    assert validated is True or str(validated).startswith("not validated: ")
    if validated is True:
        entry = manifest["parity"]["fp16"]["image_encoder"]
        assert entry["chosen"] == "fp16" and entry["min_cosine"] >= 0.999
    model = onnx.load(out / "image_encoder.fp16.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    fp16_inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert fp16_inits  # weights really are fp16
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            assert not set(node.input[1:]) & fp16_inits  # LayerNorm scale/bias stay fp32
    assert np.isfinite(manifest["parity"]["fp32"][E2E]["max_abs"])


def test_a_batch_coupled_bundle_is_refused_at_export(monkeypatch, tiny_run, tmp_path):
    """The export's batch-invariance gate: a bound no backend can meet stands in for a coupled graph."""
    from crisis_tool.runtime import batch_invariance

    monkeypatch.setitem(batch_invariance.TOLERANCES, "fp32", -1.0)
    out = tmp_path / "coupled"
    with pytest.raises(CrisisToolError) as info:
        _export(tiny_run, out, precision="fp32")
    lines = str(info.value).splitlines()
    assert "batch-invariance gate failed" in lines[0] and any("fp32 batch_invariance" in line for line in lines)
    assert not out.exists()
    forced = _export(tiny_run, tmp_path / "forced", precision="fp32", force=True)
    assert forced["forced"] is True and forced["parity"]["fp32"]["batch_invariance"]["passed"] is False
