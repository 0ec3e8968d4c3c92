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
from crisis_tool.export.int8_candidates import DYNAMIC_CANDIDATES
from crisis_tool.export.validate import END_TO_END as VALIDATE_E2E
from crisis_tool.export.validate import GRAPHS as VALIDATE_GRAPHS
from crisis_tool.export.validate import judge, wilson_interval
from crisis_tool.runtime.errors import CrisisToolError
from crisis_tool.runtime.graph_table import END_TO_END, GRAPHS, Tolerance


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
    assert VALIDATE_GRAPHS is GRAPHS and VALIDATE_E2E is END_TO_END  # the gates use the runtime's table
    for graph in ("image_encoder", "text_encoder"):
        assert GRAPHS[graph].tolerance("int8") == Tolerance(min_cosine=0.999)
        assert GRAPHS[graph].tolerance("fp16") == Tolerance(min_cosine=0.999)
        assert GRAPHS[graph].tolerance("fp32") == Tolerance(min_cosine=0.99999)
    assert GRAPHS["head"].tolerance("fp32") == Tolerance(max_abs=1e-4, min_top1=1.0)
    assert END_TO_END["fp32"] == Tolerance(max_abs=1e-4, min_top1=1.0)
    for precision in ("int8", "fp16"):
        assert GRAPHS["head"].tolerance(precision) == Tolerance(min_top1=0.99)
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
        assert set(entry["candidates"]) == set(DYNAMIC_CANDIDATES)  # no static Q/DQ without real data
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
    lo, hi = report["head"]["top1_interval"]
    assert lo <= report["head"]["top1_agreement"] <= hi
    assert report["end_to_end"]["fallback"][0]["fp32"] == []
    assert not list(out.glob("*.QInt8*")) and not list(out.glob("*.QUInt8*"))  # candidates are scratch
    ops = {n.op_type for n in onnx.load(out / "image_encoder.int8.onnx").graph.node}
    assert "MatMulInteger" in ops or "ConvInteger" in ops or "DynamicQuantizeLinear" in ops


def test_graph_failing_every_candidate_stays_fp32(monkeypatch, tiny_run, tmp_path):
    monkeypatch.setitem(GRAPHS["image_encoder"].tolerances, "int8", Tolerance(min_cosine=1.5))
    manifest = _export(tiny_run, tmp_path / "b")
    entry = manifest["parity"]["int8"]["image_encoder"]
    assert entry["chosen"] == "fp32" and "no int8 candidate passed its gate" in entry["why"]
    assert all(not c["passed"] for c in entry["candidates"].values())
    assert manifest["graphs"]["int8"]["image_encoder"]["file"] == "image_encoder.onnx"
    assert manifest["validated"]["int8"] is True


# ---------------------------------------------------------------- the end-to-end fallback
def test_fallback_order_and_all_fp32_excluded():
    everything = ["image_encoder", "text_encoder", "head"]
    assert fallback.combinations(everything) == [[], ["head"], ["head", "text_encoder"]]
    assert fallback.combinations(["image_encoder", "head"]) == [[], ["head"]]
    assert fallback.combinations(["head"]) == [[]]


def test_end_to_end_failure_falls_back_to_fp32_head(monkeypatch, tiny_run, tmp_path, capsys):
    real = fallback.check_end_to_end

    def failing_with_int8_head(paths, cases, precision):
        report = real(paths, cases, precision)
        if paths["head"].name.endswith(".int8.onnx"):
            report = {**report, "top1_agreement": 0.5, "passed": False}
        return report

    monkeypatch.setattr(fallback, "check_end_to_end", failing_with_int8_head)
    out = tmp_path / "b"
    manifest = _export(tiny_run, out)
    report = manifest["parity"]["int8"]
    tried = report["end_to_end"]["fallback"]
    assert [t["fp32"] for t in tried] == [[], ["head"]] and [t["passed"] for t in tried] == [False, True]
    assert report["head"]["chosen"] == "fp32" and "end-to-end fallback" in report["head"]["why"]
    assert manifest["graphs"]["int8"]["head"]["file"] == "head.onnx" and not (out / "head.int8.onnx").exists()
    assert manifest["validated"]["int8"] is True


def test_only_all_fp32_passing_fails_listing_every_attempt(monkeypatch, tiny_run, tmp_path):
    monkeypatch.setitem(END_TO_END, "int8", Tolerance(min_top1=1.5))
    out = tmp_path / "nested" / "b"
    out.parent.mkdir()
    with pytest.raises(CrisisToolError) as info:
        _export(tiny_run, out)
    message = str(info.value)
    assert "parity gate failed" in message and "int8 end_to_end" in message
    for attempt in ("fp32=none", "fp32=head:", "fp32=head+text_encoder:"):
        assert attempt in message
    assert "candidates image_encoder:" in message and "QInt8-per-channel" in message
    assert not out.exists() and not list(out.parent.iterdir())  # nothing written, no temp dir left


def test_force_writes_bundle_marked_forced(monkeypatch, tiny_run, tmp_path):
    monkeypatch.setitem(END_TO_END, "int8", Tolerance(min_top1=1.5))
    manifest = _export(tiny_run, tmp_path / "forced", force=True)
    assert manifest["forced"] is True and manifest["validated"]["int8"] is False
    assert manifest["parity"]["int8"]["end_to_end"]["passed"] is False


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
    assert np.isfinite(manifest["parity"]["fp32"]["end_to_end"]["max_abs"])
