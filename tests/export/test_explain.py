"""`export --explain`: each head graph also outputs the post's modality share (image vs text) from the guided
cross-attention gates; it is parity-gated like any output, matches the torch reference, sums to 1, and reaches
every output line as `tasks.<task>.explain`. A bundle exported without it has no such output (no cost)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from crisis_tool.runtime.bundle import Bundle  # noqa: E402
from crisis_tool.runtime.predictor import Predictor  # noqa: E402
from crisis_tool.runtime.records import Record  # noqa: E402


@pytest.fixture(scope="module")
def explain_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory, cli) -> Path:
    out = tmp_path_factory.mktemp("explain") / "b"
    assert cli(["export", "--model", tiny_run, "--out", out, "--explain"]) == 0
    return out


def _records(tmp_path: Path) -> list[Record]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(path)
        out.append(Record(f"r{i}", f"bridge down near exit {i}" if i % 2 else "ok", str(path)))
    return out


def test_explain_is_an_extra_gated_output(explain_bundle: Path, tiny_bundle: Path) -> None:
    manifest = json.loads((explain_bundle / "manifest.json").read_text())
    (head,) = manifest["spec"]["heads"]
    assert head["explain"] is True
    outputs = [o["name"] for o in manifest["graphs"]["fp32"][head["graph"]]["outputs"]]
    assert outputs == ["logits", "probs", "modality_share"]
    entry = manifest["parity"]["fp32"][head["graph"]]
    assert entry["passed"] and entry["max_abs_modality_share"] <= entry["limits"]["max_abs_modality_share"] == 1e-4
    plain = Bundle.load(tiny_bundle).spec.heads[0].graph_spec()
    assert plain.output_names == ["logits", "probs"]  # without --explain the graph has no extra output


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_explain_matches_torch_and_sums_to_one(backend: str, explain_bundle: Path, tmp_path: Path) -> None:
    from crisis_tool.runtime.backends import backend_unavailable_reason

    if backend_unavailable_reason(backend):
        pytest.skip(backend_unavailable_reason(backend))
    records = _records(tmp_path)
    with Predictor.from_bundle(explain_bundle, backend=backend, groups=False) as ours, \
            Predictor.from_bundle(explain_bundle, backend="torch", groups=False) as ref:
        got, want = ours.predict(records), ref.predict(records)
    for a, b in zip(got, want, strict=True):
        (task,) = a.tasks
        share, ref_share = a.tasks[task].explain, b.tasks[task].explain
        assert share is not None and ref_share is not None
        assert share["image"] + share["text"] == pytest.approx(1.0, abs=1e-6)
        assert 0.0 <= share["image"] <= 1.0
        assert share["image"] == pytest.approx(ref_share["image"], abs=1e-4)


def test_explain_reaches_the_output_line(explain_bundle: Path, tmp_path: Path, cli) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": r.id, "text": r.text, "image": r.image}) + "\n"
                           for r in _records(tmp_path)))
    out = tmp_path / "out.jsonl"
    assert cli(["predict", "--bundle", explain_bundle, "--input", src, "--output", out, "--backend",
                "onnxruntime"]) == 0
    for line in map(json.loads, out.read_text().splitlines()):
        explain = line["tasks"]["informative"]["explain"]
        assert set(explain) == {"image", "text"} and sum(explain.values()) == pytest.approx(1.0, abs=1e-6)
