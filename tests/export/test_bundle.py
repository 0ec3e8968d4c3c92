"""Bundle content, hashes, verify/inspect CLI, tampering, refusals."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from crisis_tool.runtime.manifest import FORMAT_VERSION, sha256_file


@pytest.fixture
def bundle_copy(tiny_int8_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_int8_bundle, tmp_path / "bundle"))


def test_manifest_content(tiny_int8_bundle: Path, tiny_run: Path):
    m = json.loads((tiny_int8_bundle / "manifest.json").read_text())
    run_config = json.loads((tiny_run / "config.json").read_text())
    assert m["format_version"] == FORMAT_VERSION
    (head,) = m["spec"]["heads"]
    assert head["task"] == "informative" and head["labels"] == ["not_informative", "informative"]
    assert head["graph"] == "head_informative" and head["weights"] == "head_informative.safetensors"
    assert m["encoders"] == {"model": "crisis-tiny", "pretrained": "none", "random": True}
    assert m["text_source"] == "tweet" and "model" not in m  # the run config is stored once, in model_config.json
    assert m["preprocess"] == run_config["preprocess"]
    assert m["tokenizer"]["sot_token_id"] == 49406 and m["tokenizer"]["eot_token_id"] == 49407
    assert m["tokenizer"]["context_length"] == 77 and (tiny_int8_bundle / m["tokenizer"]["vocab_file"]).is_file()
    assert set(m["graphs"]) == {"fp32", "int8"}
    assert m["graphs"]["fp32"]["text_encoder"]["file"] == "text_encoder.onnx"
    assert m["graphs"]["int8"]["head_informative"]["file"] == "head_informative.int8.onnx"
    assert [i["name"] for i in m["graphs"]["fp32"]["head_informative"]["inputs"]] == ["image_embeds", "text_embeds"]
    assert m["graphs"]["fp32"]["text_encoder"]["inputs"][0] == {"name": "input_ids", "dtype": "int64",
                                                                 "shape": ["B", "L"]}
    assert set(m["versions"]) == {"torch", "open_clip", "onnx", "onnxruntime", "crisis_tool"}
    assert m["created_utc"].endswith("Z") and m["forced"] is False and m["max_batch"] == 8
    expected = {"head_informative.safetensors", "model_config.json", m["tokenizer"]["vocab_file"]}
    expected |= {g["file"] for graphs in m["graphs"].values() for g in graphs.values()}
    assert set(m["files"]) == expected
    for rel, meta in m["files"].items():
        path = tiny_int8_bundle / rel
        assert meta["sha256"] == sha256_file(path) and meta["size"] == path.stat().st_size
    assert json.loads((tiny_int8_bundle / "model_config.json").read_text()) == run_config
    assert not list(tiny_int8_bundle.parent.glob(".*partial*"))


def test_verify_and_inspect_cli(tiny_int8_bundle: Path, cli, capsys):
    assert cli(["verify", tiny_int8_bundle]) == 0
    assert "ok:" in capsys.readouterr().out
    assert cli(["inspect", tiny_int8_bundle]) == 0
    out = capsys.readouterr().out
    assert "informative" in out and "parity" in out and "end_to_end" in out and "crisis-tiny" in out


@pytest.mark.parametrize("component", ["image_encoder", "text_encoder", "head_informative"])
def test_tampered_file_fails_naming_it(bundle_copy: Path, component: str, cli, capsys):
    path = bundle_copy / f"{component}.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cli(["verify", bundle_copy]) == 1
    assert f"{component}.onnx" in capsys.readouterr().err


def test_missing_file_fails_naming_it(bundle_copy: Path, cli, capsys):
    (bundle_copy / "head_informative.safetensors").unlink()
    assert cli(["verify", bundle_copy]) == 1
    assert "missing file head_informative.safetensors" in capsys.readouterr().err


def test_reference_head_is_refused_before_writing(make_run, tmp_path: Path, cli, capsys):
    run = make_run(tmp_path / "ref-run", head_type="reference")
    out = tmp_path / "out"
    assert cli(["export", "--model", run, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "reference" in err and "batch" in err and len(err.splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ref-run"]


def test_clip_weights_mismatch_is_refused(tiny_run: Path, tmp_path: Path, cli, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    config["clip"]["weights_sha256"] = "0" * 64
    (run / "config.json").write_text(json.dumps(config))
    assert cli(["export", "--model", run, "--out", tmp_path / "out"]) == 2
    assert "sha256" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_existing_out_dir_and_tar(tiny_run: Path, tmp_path: Path, cli):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli(["export", "--model", tiny_run, "--out", out, "--max-batch", "2"]) == 2
    assert (out / "keep.txt").exists()
    assert cli(["export", "--model", tiny_run, "--out", out, "--max-batch", "2", "--force", "--tar"]) == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert "b/manifest.json" in tar.getnames()
    assert json.loads((out / "manifest.json").read_text())["forced"] is False
