"""A format-2 bundle (one head: head.onnx, head.safetensors, task/labels at the top of the manifest) still loads
as a one-head spec and predicts exactly as its format-3 twin; an unknown format is one line naming the fix.

tests/fixtures/bundle_v2 holds the manifest.json and model_config.json that the previous main wrote for the
tiny damage run; the graphs (too large to keep) are those of today's export of the same run, renamed as format 2
named them. The file table and digest are recomputed over them, as that export did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError
from crisis_tool.runtime.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, canonical_digest, sha256_file
from crisis_tool.runtime.predictor import Predictor
from crisis_tool.runtime.records import Record

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bundle_v2"


def _write_manifest(root: Path, manifest: dict) -> None:
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    (root / MANIFEST_DIGEST_NAME).write_text(canonical_digest(manifest) + "\n")


@pytest.fixture
def v2_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    root = tmp_path / "v2"
    root.mkdir()
    for name in ("image_encoder.onnx", "text_encoder.onnx"):
        shutil.copyfile(tiny_bundle / name, root / name)
    shutil.copyfile(tiny_bundle / "head_damage.onnx", root / "head.onnx")
    shutil.copyfile(tiny_bundle / "head_damage.safetensors", root / "head.safetensors")
    shutil.copytree(tiny_bundle / "tokenizer", root / "tokenizer")
    shutil.copyfile(FIXTURE / "model_config.json", root / "model_config.json")
    manifest = json.loads((FIXTURE / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2 and manifest["task"] == "damage"
    manifest["files"] = {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
                         for rel in manifest["files"]}
    _write_manifest(root, manifest)
    return root


def test_v2_bundle_loads_as_one_head_spec(v2_bundle: Path) -> None:
    bundle = Bundle.load(v2_bundle)  # verified: digest, file hashes, run config
    (head,) = bundle.spec.heads
    assert (head.task, head.graph, head.weights) == ("damage", "head", "head.safetensors")
    assert head.labels == ("little_or_no_damage", "mild_damage", "severe_damage")
    assert head.temperature == 1.0 and head.review_threshold is None
    assert bundle.manifest.format_version == 2


def test_v2_bundle_predicts_as_its_v3_twin(v2_bundle: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
        records.append(Record(str(i), f"storm damage report {i}", str(path)))
    with Predictor.from_bundle(v2_bundle, backend="onnxruntime") as old, \
            Predictor.from_bundle(tiny_bundle, backend="onnxruntime") as new:
        for a, b in zip(old.predict(records), new.predict(records), strict=True):
            assert a.label == b.label and a.probs == b.probs and list(a.tasks) == ["damage"]


def test_v2_bundle_with_forged_labels_still_disagrees_with_its_run_config(v2_bundle: Path) -> None:
    manifest = json.loads((v2_bundle / MANIFEST_NAME).read_text())
    manifest["labels"] = manifest["labels"][::-1]
    _write_manifest(v2_bundle, manifest)
    with pytest.raises(BundleError, match="labels .* disagrees with model_config.json"):
        Bundle.load(v2_bundle)


@pytest.mark.parametrize("version", [1, 4])
def test_unknown_format_is_one_line_with_the_fix(v2_bundle: Path, version: int, cli, capsys) -> None:
    manifest = json.loads((v2_bundle / MANIFEST_NAME).read_text())
    manifest["format_version"] = version
    _write_manifest(v2_bundle, manifest)
    assert cli(["verify", v2_bundle]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"bundle format {version}" in err[0] and "crisis-tool export" in err[0]
