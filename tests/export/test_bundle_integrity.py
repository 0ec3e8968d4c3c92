"""A bundle that cannot lie: digest over the manifest, paths inside the bundle, schema errors, graph signatures,
labels vs head, and the one-line errors of export on bad runs and unwritable folders (issues 10 and 12)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError
from crisis_tool.runtime.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, canonical_digest, sha256_file


@pytest.fixture
def bundle_copy(tiny_int8_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_int8_bundle, tmp_path / "bundle"))


def _edit(root: Path, change, sign: bool = True) -> None:
    """Rewrite manifest.json through `change(dict)`; with `sign`, also recompute its digest (a careful forger)."""
    data = json.loads((root / MANIFEST_NAME).read_text())
    change(data)
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    if sign:
        (root / MANIFEST_DIGEST_NAME).write_text(canonical_digest(data) + "\n")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _head(m: dict) -> dict:
    return m["spec"]["heads"][0]


def _with_head(m: dict, change) -> dict:
    """A deep copy of manifest `m` with `change` applied to its first head."""
    copy = json.loads(json.dumps(m))
    change(copy["spec"]["heads"][0])
    return copy


def test_reversed_labels_fail_the_digest(bundle_copy: Path, cli, capsys) -> None:
    _edit(bundle_copy, lambda m: _head(m).update(labels=_head(m)["labels"][::-1]), sign=False)
    assert cli(["verify", bundle_copy]) == 1
    assert "manifest.json was altered" in _one_error_line(capsys)


def test_reversed_labels_with_a_forged_digest_disagree_with_the_hashed_run_config(bundle_copy, cli, capsys):
    _edit(bundle_copy, lambda m: _head(m).update(labels=_head(m)["labels"][::-1]))
    assert cli(["verify", bundle_copy]) == 1
    line = _one_error_line(capsys)
    assert "labels" in line and "disagrees with model_config.json" in line


@pytest.mark.parametrize("field, value", [("temperature", 0.5), ("review_threshold", 0.01)])
def test_calibration_is_hashed_and_stated_twice(bundle_copy: Path, field: str, value: float, cli, capsys) -> None:
    """Temperature and review threshold are in the hashed manifest and the hashed run config: changing the
    manifest fails its digest, and a forged digest still disagrees with model_config.json."""
    _edit(bundle_copy, lambda m: _head(m).update({field: value}), sign=False)
    assert cli(["verify", bundle_copy]) == 1
    assert "manifest.json was altered" in _one_error_line(capsys)
    _edit(bundle_copy, lambda m: _head(m).update({field: value}))
    assert cli(["verify", bundle_copy]) == 1
    line = _one_error_line(capsys)
    assert field.replace("_", " ") in line and "disagrees with model_config.json" in line


@pytest.mark.parametrize("path, problem", [
    ("/etc/passwd", "absolute"), ("../outside.onnx", "'..'"), ("sub/../head_informative.onnx", "'..'"),
])
def test_graph_paths_must_stay_inside(bundle_copy: Path, path: str, problem: str, cli, capsys) -> None:
    _edit(bundle_copy, lambda m: m["graphs"]["fp32"]["head_informative"].update(file=path))
    assert cli(["verify", bundle_copy]) == 1
    line = _one_error_line(capsys)
    assert "graphs.fp32.head_informative.file" in line and problem in line
    with pytest.raises(BundleError, match=problem.strip("'")):
        Bundle.load(bundle_copy, verify=False)  # refused even unverified


def test_unlisted_graph_is_refused(bundle_copy: Path, cli, capsys) -> None:
    shutil.copyfile(bundle_copy / "head_informative.onnx", bundle_copy / "other_head.onnx")
    _edit(bundle_copy, lambda m: m["graphs"]["fp32"]["head_informative"].update(file="other_head.onnx"))
    assert cli(["verify", bundle_copy]) == 1
    line = _one_error_line(capsys)  # refused as a file the manifest does not list, whichever check sees it first
    assert "other_head.onnx" in line and ("does not list it" in line or "not in the manifest" in line)


def test_files_entry_outside_the_bundle_is_refused(bundle_copy: Path, tmp_path: Path, cli, capsys) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    meta = {"sha256": sha256_file(outside), "size": 1}
    _edit(bundle_copy, lambda m: m["files"].update({"../outside.bin": meta}))
    assert cli(["verify", bundle_copy]) == 1
    assert "'..'" in _one_error_line(capsys)
    # a link inside the bundle that resolves outside it is refused too
    (bundle_copy / "link.bin").symlink_to(outside)
    _edit(bundle_copy, lambda m: m.update(files={**{k: v for k, v in m["files"].items() if ".." not in k},
                                                 "link.bin": meta}))
    assert cli(["verify", bundle_copy]) == 1
    assert "outside the bundle" in _one_error_line(capsys)


@pytest.mark.parametrize("content, expected", [
    ("[]", "must be a JSON object, not a list"),
    ("null", "must be a JSON object, not null"),
    ("manifest without labels", "'spec.heads[0].labels' is missing"),
    ("files as a list", "'files' must be a JSON object"),
    ("size as a string", "'files.head_informative.onnx.size' must be int"),
    ("labels of numbers", "'spec.heads[0].labels' must be a non-empty list"),
    ("no heads", "'spec.heads' must list at least one head"),
    ("temperature as text", "'spec.heads[0].temperature' must be int or float"),
    ("NaN", "NaN is not valid JSON"),
])
def test_wrong_shape_is_one_line_not_a_traceback(bundle_copy: Path, content: str, expected: str, cli, capsys):
    data = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    text = {
        "manifest without labels": lambda: json.dumps(_with_head(data, lambda h: h.pop("labels"))),
        "no heads": lambda: json.dumps({**data, "spec": {**data["spec"], "heads": []}}),
        "temperature as text": lambda: json.dumps(_with_head(data, lambda h: h.update(temperature="1"))),
        "files as a list": lambda: json.dumps({**data, "files": list(data["files"])}),
        "size as a string": lambda: json.dumps({**data, "files": {**data["files"], "head_informative.onnx": {
            **data["files"]["head_informative.onnx"], "size": "12"}}}),
        "labels of numbers": lambda: json.dumps(_with_head(data, lambda h: h.update(labels=[1, 2]))),
        "NaN": lambda: json.dumps(data).replace('"forced": false', '"forced": NaN'),
    }.get(content, lambda: content)()
    (bundle_copy / MANIFEST_NAME).write_text(text)
    for command in (["verify", bundle_copy], ["inspect", bundle_copy],
                    ["predict", "--bundle", bundle_copy, "--input", "-", "--output", "-"]):
        assert cli(command) == 1
        assert expected in _one_error_line(capsys)


def _replace_head_with_image_encoder(root: Path) -> None:
    """Swap the head graph predict loads for another graph (other input names and widths) and re-hash it."""
    bundle = Bundle.load(root)
    head = bundle.graph_path_or_fp32("head_informative", bundle.precision)
    shutil.copyfile(root / "image_encoder.onnx", head)
    meta = {"sha256": sha256_file(head), "size": head.stat().st_size}
    _edit(root, lambda m: m["files"].update({head.name: meta}))


def test_replaced_graph_is_refused_at_load_before_any_output(bundle_copy: Path, tmp_path: Path, cli, capsys):
    from PIL import Image

    _replace_head_with_image_encoder(bundle_copy)
    assert cli(["verify", bundle_copy]) == 0  # every hash matches: only the signature check can tell
    capsys.readouterr()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "a.png")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "flood", "image": "a.png"}) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    assert cli(["predict", "--bundle", bundle_copy, "--input", src, "--output", out]) == 1
    line = _one_error_line(capsys)
    assert "head_informative graph inputs are ['pixel_values']" in line and "['image_embeds', 'text_embeds']" in line
    assert out.read_text() == "previous results\n"


def test_graph_with_other_width_is_refused(bundle_copy: Path) -> None:
    from crisis_tool.runtime.backends import create_backend

    _edit(bundle_copy, lambda m: m["dims"].update(D=m["dims"]["D"] + 1))
    bundle = Bundle.load(bundle_copy, verify=False)
    with pytest.raises(BundleError, match=r"image_embeds axis 1 is \d+, expected \d+"):
        create_backend("onnxruntime", bundle)


def test_predictor_refuses_a_bundle_with_one_flipped_byte(bundle_copy: Path) -> None:
    from crisis_tool.runtime.predictor import Predictor

    path = bundle_copy / "tokenizer" / next(p.name for p in (bundle_copy / "tokenizer").iterdir())
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="was altered"):
        Predictor.from_bundle(bundle_copy)  # verification is on by default


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_as_a_graph_does_not_hang(bundle_copy: Path) -> None:
    (bundle_copy / "head_informative.onnx").unlink()
    os.mkfifo(bundle_copy / "head_informative.onnx")
    code = ("import sys; from crisis_tool.cli import run; sys.exit(run(['verify', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(bundle_copy)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "FIFO" in proc.stderr and "Traceback" not in proc.stderr


def test_labels_that_disagree_with_the_head_are_refused_at_export(tiny_run: Path, tmp_path: Path, cli, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    config["labels"] = [*config["labels"], "extra_class"]
    (run / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert cli(["export", "--model", run, "--out", out]) == 2
    line = _one_error_line(capsys)
    assert "3 labels" in line and "2 classes" in line and not out.exists()


def test_corrupt_weights_are_one_line(tiny_run: Path, tmp_path: Path, cli, capsys) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "model.safetensors").write_bytes(b"\x00" * 64)
    assert cli(["export", "--model", run, "--out", tmp_path / "out"]) == 2
    assert "model.safetensors" in _one_error_line(capsys)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a folder even root cannot write)")
def test_export_to_a_read_only_folder_fails_before_work(tiny_run: Path, cli, capsys, monkeypatch) -> None:
    import crisis_tool.clip_loader as clip_loader

    monkeypatch.setattr(clip_loader, "load_recorded_clip", lambda *a, **k: pytest.fail("export started work"))
    assert cli(["export", "--model", tiny_run, "--out", "/proc/crisis-tool-bundle"]) == 2
    assert "not writable" in _one_error_line(capsys)
