"""int8 / fp16 variants and their gates: pass, fail (nothing written, exit 1) and --force (forced: true)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from crisis_tool.export.graph_specs import GRAPHS, Tolerance


def test_int8_gate_passes_and_records_weight_type(tiny_bundle: Path):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["validated"]["int8"] is True
    assert manifest["forced"] is False
    report = manifest["parity"]["int8"]
    image = report["image_encoder"]
    assert image["weight_type"] in ("QUInt8", "QInt8") and image["min_cosine"] >= 0.999
    assert report["end_to_end"]["top1_agreement"] >= 0.99
    for component in GRAPHS:
        entry = report[component]
        assert entry["passed"] and entry["weight_type"] in ("QUInt8", "QInt8", "QUInt8-per-channel", "fp32")
        assert entry["tried"][entry["weight_type"]]["passed"]
        file = manifest["graphs"]["int8"][component]["file"]
        # A graph left unquantized shares the fp32 file instead of a duplicate copy.
        assert file == (f"{component}.onnx" if entry["weight_type"] == "fp32" else f"{component}.int8.onnx")
        assert (tiny_bundle / file).is_file()
    ops = {n.op_type for n in onnx.load(tiny_bundle / "image_encoder.int8.onnx").graph.node}
    assert "MatMulInteger" in ops or "ConvInteger" in ops


def _impossible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GRAPHS["image_encoder"].tolerances, "int8", Tolerance(min_cosine=1.5))


def test_failing_gate_exits_nonzero_and_writes_nothing(monkeypatch, tiny_run, tmp_path, cli, capsys):
    _impossible(monkeypatch)
    out = tmp_path / "nested" / "bundle"
    code = cli(["export", "--model", tiny_run, "--out", out, "--precision", "int8", "--max-batch", "4"])
    err = capsys.readouterr().err
    assert code == 1
    assert "parity gate failed" in err and "int8 image_encoder" in err and "min_cosine" in err
    assert not out.exists()
    assert not list(out.parent.iterdir())  # no temp dir left behind
    assert not list(tmp_path.rglob("manifest.json"))


def test_force_writes_bundle_marked_forced(monkeypatch, tiny_run, tmp_path, cli):
    _impossible(monkeypatch)
    out = tmp_path / "forced"
    assert cli(["export", "--model", tiny_run, "--out", out, "--precision", "int8", "--max-batch", "4",
                "--force"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["forced"] is True and manifest["validated"]["int8"] is False
    assert manifest["parity"]["int8"]["image_encoder"]["passed"] is False
    assert cli(["verify", out]) == 0


def test_fp16_variant_keeps_norms_in_fp32(tiny_run, tmp_path, cli):
    out = tmp_path / "fp16"
    assert cli(["export", "--model", tiny_run, "--out", out, "--precision", "fp16", "--max-batch", "3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    validated = manifest["validated"]["fp16"]
    assert validated is True or str(validated).startswith("not validated: ")
    if validated is True:
        assert manifest["parity"]["fp16"]["image_encoder"]["min_cosine"] >= 0.999
    model = onnx.load(out / "image_encoder.fp16.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    fp16_inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert fp16_inits  # weights really are fp16
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            assert not set(node.input[1:]) & fp16_inits  # LayerNorm scale/bias stay fp32
