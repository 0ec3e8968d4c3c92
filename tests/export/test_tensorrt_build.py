"""TensorRT engine building against a FAKE `tensorrt` module (no GPU here): profiles, flags, fp32 pins,
timing cache, manifest entries, and the clear errors without TensorRT or without a GPU."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import fake_tensorrt
import pytest


def _install(monkeypatch: pytest.MonkeyPatch, devices: int = 1) -> types.ModuleType:
    trt = fake_tensorrt.as_module()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    runtime = fake_tensorrt.fake_cudart(devices)
    bindings = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cuda", types.SimpleNamespace(bindings=bindings))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    return trt


@pytest.fixture
def bundle_copy(tiny_int8_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_int8_bundle, tmp_path / "bundle"))


def test_fp16_engines_profiles_flags_and_fp32_pins(monkeypatch, bundle_copy, tmp_path, capsys, cli):
    _install(monkeypatch)
    cache = tmp_path / "timing.cache"
    code = cli(["export", "--from-bundle", bundle_copy, "--format", "trt", "--precision", "fp16",
                    "--max-batch", "32", "--timing-cache", cache])
    assert code == 0, capsys.readouterr().err
    builds = fake_tensorrt.RECORD["builds"]
    assert len(builds) == 3
    image, text, head = builds
    assert image["inputs"] == {"pixel_values": [-1, 3, 224, 224]}
    assert image["profiles"] == [{"pixel_values": ([1, 3, 224, 224], [8, 3, 224, 224], [32, 3, 224, 224])}]
    assert text["profiles"] == [{"input_ids": ([1, 1], [8, 77], [32, 77])}]
    assert set(head["profiles"][0]) == {"image_embeds", "text_embeds"}
    assert head["profiles"][0]["image_embeds"] == ([1, 64], [8, 64], [32, 64])
    for build in builds:
        assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= build["flags"] and "INT8" not in build["flags"]
        assert build["fp32_outputs"]
    assert {"LayerNormalization", "Softmax"} <= image["fp32_layers"]
    assert {"LayerNormalization", "Softmax"} <= text["fp32_layers"]
    assert {"Softmax", "ReduceMean"} & head["fp32_layers"]  # RMSNorm / softmax in the head stay fp32
    # timing cache: empty on the first build, then loaded from the file written by the previous one
    assert image["timing_cache_loaded"] == b""
    assert text["timing_cache_loaded"].startswith(b"fake-timing-cache:")
    assert cache.read_bytes().startswith(b"fake-timing-cache:")

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    entry = manifest["engines"]["fp16"]["image_encoder"]
    assert entry["file"] == "engines/image_encoder.fp16.engine"
    assert entry["trt_version"] == fake_tensorrt.__version__
    assert entry["gpu_name"] == "NVIDIA FakeGPU 80GB" and entry["compute_capability"] == "9.0"
    assert json.loads((bundle_copy / "engines/image_encoder.fp16.json").read_text()) == entry
    assert "engines/text_encoder.fp16.engine" in manifest["files"]
    assert cli(["verify", bundle_copy]) == 0


def _fp16_fallback_expected() -> bool:
    """On x86 CPUs without VNNI/AMX, onnxruntime's u8s8 kernels saturate: the text graph's Q/DQ gate (run in
    onnxruntime) fails there, and the engine is honestly built fp16 instead of int8."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags.split(":")[1].split()))


def test_int8_engines_use_explicit_qdq_graphs(monkeypatch, bundle_copy, tmp_path, cli):
    _install(monkeypatch)
    code = cli(["export", "--from-bundle", bundle_copy, "--format", "trt", "--precision", "int8",
                    "--timing-cache", tmp_path / "tc"])
    assert code == 0
    fallback = _fp16_fallback_expected()
    for build, parsed in zip(fake_tensorrt.RECORD["builds"], fake_tensorrt.RECORD["parsed"], strict=True):
        assert build["profiles"][0][next(iter(build["inputs"]))][2][0] == 8  # bundle's --max-batch
        if "INT8" not in build["flags"] and fallback:  # the text graph's Q/DQ gate failed: built fp16, no Q/DQ
            assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= build["flags"]
            assert "QuantizeLinear" not in set(parsed["ops"])
            continue
        assert {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"} <= build["flags"]
        assert {"QuantizeLinear", "DequantizeLinear"} <= set(parsed["ops"])
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert set(manifest["engines"]["int8"]) == {"image_encoder", "text_encoder", "head_informative"}
    assert not any(p.suffix == ".onnx" for p in (bundle_copy / "engines").iterdir())  # Q/DQ graphs are scratch


def test_export_with_engine_trt_builds_after_the_onnx_bundle(monkeypatch, tiny_run, tmp_path, cli):
    _install(monkeypatch)
    out = tmp_path / "b"
    code = cli(["export", "--model", tiny_run, "--out", out, "--format", "trt", "--precision", "fp16",
                    "--max-batch", "4", "--timing-cache", tmp_path / "tc"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["engines"]["fp16"]) == {"image_encoder", "text_encoder", "head_informative"}
    assert fake_tensorrt.RECORD["builds"][0]["profiles"][0]["pixel_values"][2][0] == 4


def test_from_bundle_trt_calibrates_and_gates_on_calib_data(monkeypatch, bundle_copy, crisismmd_root, tmp_path,
                                                            cli, capsys):
    """`--from-bundle --format trt --calib-data ROOT --task --split --calib-n`: the Q/DQ graphs are calibrated and
    every engine gated on those records (n and source recorded), not on generated inputs."""
    _install(monkeypatch)
    code = cli(["export", "--from-bundle", bundle_copy, "--format", "trt", "--precision", "int8",
                "--timing-cache", tmp_path / "tc", "--calib-data", crisismmd_root, "--task", "informative",
                "--split", "dev", "--calib-n", "5"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "GENERATED" not in err
    source = f"crisismmd:{crisismmd_root} task=informative split=dev (settingA)"
    parity = json.loads((bundle_copy / "manifest.json").read_text())["parity"]["trt-int8"]
    for graph in ("image_encoder", "text_encoder", "head_informative"):
        entry = parity[graph]
        assert entry["calibration"] == source and entry["n"] == 5 and entry["batches"] == [1, 3], graph
        assert entry["qdq_onnxruntime"]["n"] == 5 and entry["passed"]
    assert fake_tensorrt.RECORD["runs"].count("image_embeds") == 3  # batches 1, 3, 1 through the engine


@pytest.mark.parametrize(("extra", "message"), [
    (["--split", "dev"], "pass --calib-data too"),
    (["--calib-data", ".", "--task", "informative"], "needs both --task and --split"),
    (["--calib-data", ".", "--calib-n", "0"], "--calib-n must be >= 1"),
])
def test_calibration_usage_errors_before_any_work(monkeypatch, bundle_copy, tmp_path, cli, capsys, extra, message):
    _install(monkeypatch)
    code = cli(["export", "--from-bundle", bundle_copy, "--format", "trt", "--timing-cache", tmp_path / "tc",
                *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert fake_tensorrt.RECORD["builds"] == []


def test_missing_tensorrt_is_one_clear_line(monkeypatch, bundle_copy, capsys, cli):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code = cli(["export", "--from-bundle", bundle_copy, "--format", "trt"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "tensorrt" in err and f"--from-bundle {bundle_copy} --format trt" in err
    assert "engines" not in json.loads((bundle_copy / "manifest.json").read_text()) or not json.loads(
        (bundle_copy / "manifest.json").read_text())["engines"]


def test_no_gpu_is_one_clear_line(monkeypatch, bundle_copy, capsys, cli):
    _install(monkeypatch, devices=0)
    code = cli(["export", "--from-bundle", bundle_copy, "--format", "trt"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "GPU" in err and "is ready for" in err
    assert fake_tensorrt.RECORD["builds"] == []


def test_export_trt_without_tensorrt_keeps_the_onnx_bundle(monkeypatch, tiny_run, tmp_path, capsys, cli):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "b"
    code = cli(["export", "--model", tiny_run, "--out", out, "--format", "trt"])
    assert code == 2
    assert f"ONNX bundle at {out.resolve()} is ready" in capsys.readouterr().err
    assert cli(["verify", out]) == 0


def test_engine_compat_check():
    from crisis_tool.runtime.engine_meta import check_engine_compat
    from crisis_tool.runtime.errors import BundleError

    entry = {"file": "engines/head.fp16.engine", "trt_version": "10.3.0", "gpu_name": "NVIDIA H100",
             "compute_capability": "9.0"}
    check_engine_compat(entry, "10.3.0", "NVIDIA H100", "9.0")
    with pytest.raises(BundleError, match=r"trt_version 10.3.0 != 10.4.0.*--from-bundle b --format trt"):
        check_engine_compat(entry, "10.4.0", "NVIDIA H100", "9.0", bundle="b")
    with pytest.raises(BundleError, match="compute_capability 9.0 != 8.9"):
        check_engine_compat(entry, "10.3.0", "NVIDIA L4", "8.9")
    with pytest.raises(BundleError, match="lacks gpu_name"):
        check_engine_compat({"file": "x", "trt_version": "10.3.0", "compute_capability": "9.0"}, "10.3.0", "a", "9.0")


def test_every_engine_is_run_and_gated_before_it_is_kept(monkeypatch, bundle_copy, tmp_path):
    from crisis_tool.export.tensorrt_build import build_bundle_engines

    trt = _install(monkeypatch)
    built = build_bundle_engines(bundle_copy, "int8", None, tmp_path / "tc")
    assert sorted(trt.RECORD["runs"]) == sorted(["image_embeds"] * 3 + ["text_embeds"] * 3 + ["logits+probs"] * 3)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    parity = manifest["parity"]["trt-int8"]
    for graph in ("image_encoder", "text_encoder", "head_informative"):
        entry = parity[graph]
        assert entry["passed"] and entry["n"] == 1 + 3 + 8 and entry["calibration"] == "generated"
        if graph == "text_encoder" and _fp16_fallback_expected() and not entry["qdq_onnxruntime"]["passed"]:
            assert entry["built_as"] == "fp16" and "no Q/DQ graph passed" in entry["why"]
        else:
            assert entry["qdq_onnxruntime"]["passed"] and entry["built_as"] == "int8"
        assert built[graph]["parity"]["passed"]
    assert parity["image_encoder"]["min_cosine"] >= 0.999 and parity["head_informative"]["top1_agreement"] >= 0.99
    assert set(manifest["engines"]["int8"]) == {"image_encoder", "text_encoder", "head_informative"}


def test_an_engine_returning_wrong_numbers_is_not_kept(monkeypatch, bundle_copy, tmp_path):
    from crisis_tool.export.tensorrt_build import build_bundle_engines
    from crisis_tool.runtime.errors import CrisisToolError

    trt = _install(monkeypatch)
    trt.RECORD["wrong"].add("text_embeds")
    with pytest.raises(CrisisToolError, match=r"engine parity failed \(trt-fp16 text_encoder: min_cosine"):
        build_bundle_engines(bundle_copy, "fp16", None, tmp_path / "tc")
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    parity = manifest["parity"]["trt-fp16"]
    assert parity["text_encoder"]["passed"] is False and parity["image_encoder"]["passed"] is True
    assert "fp16" not in manifest["engines"]  # nothing deployable at this precision
    assert not (bundle_copy / "engines" / "text_encoder.fp16.engine").exists()
    assert "engines/text_encoder.fp16.engine" not in manifest["files"]
