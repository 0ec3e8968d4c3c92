"""`crisis-tool env`: CPU features from the kernel's flags, onnxruntime providers that really run, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crisis_tool.machine_env import cpu_info, onnxruntime_providers, recommendation, tiny_onnx_model

SAPPHIRE_RAPIDS_FLAGS = ("fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8 "
                         "avx512_fp16")


def _cpuinfo(tmp_path: Path, flags: str, model: str = "Intel(R) Xeon(R) Platinum 8480+") -> Path:
    path = tmp_path / "cpuinfo"
    block = f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    path.write_text(block + block.replace(": 0", ": 1"))
    return path


def test_cpu_features_from_flags(tmp_path: Path) -> None:
    spr = cpu_info(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS_FLAGS))
    assert spr["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert spr["features"] == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 bf16", "AMX", "AMX bf16", "AMX int8"]
    assert spr["int8_dot"] and spr["bf16"] and spr["amx"]
    old = cpu_info(_cpuinfo(tmp_path, "fpu sse2 avx avx2", model="AMD EPYC"))
    assert old["features"] == ["AVX2"] and not (old["int8_dot"] or old["bf16"] or old["amx"])
    jetson = cpu_info(_cpuinfo(tmp_path, "fp asimd asimddp", model="ARMv8"))
    assert jetson["features"] == ["Arm dot product (int8)"] and jetson["int8_dot"]


def test_recommendation_follows_the_hardware(tmp_path: Path) -> None:
    no_gpu = {"tensorrt": None, "nvidia_gpu": None, "jetson": None}
    cpu_only = {"usable": {"CPUExecutionProvider": None}}
    spr = cpu_info(_cpuinfo(tmp_path, SAPPHIRE_RAPIDS_FLAGS))
    plain = cpu_info(_cpuinfo(tmp_path, "avx2"))
    ov_cpu = {"installed": True, "devices": {"CPU": "Xeon"}}
    assert recommendation(spr, cpu_only, ov_cpu, no_gpu)[0] == "openvino bf16"
    assert recommendation(spr, cpu_only, {"installed": False}, no_gpu)[0] == "onnxruntime int8"
    assert recommendation(plain, cpu_only, {"installed": False}, no_gpu)[0] == "onnxruntime fp32"
    cuda = {"usable": {"CUDAExecutionProvider": None, "CPUExecutionProvider": None}}
    assert recommendation(plain, cuda, {"installed": False}, no_gpu)[0] == "onnxruntime fp16"
    broken_cuda = {"usable": {"CUDAExecutionProvider": "fell back to the CPU", "CPUExecutionProvider": None}}
    assert recommendation(plain, broken_cuda, {"installed": False}, no_gpu)[0] == "onnxruntime fp32"
    jetson = {"tensorrt": "10.3.0", "nvidia_gpu": None, "jetson": "NVIDIA Jetson AGX Orin"}
    assert recommendation(plain, cpu_only, {"installed": False}, jetson)[0] == "tensorrt fp16"


def test_tiny_model_is_valid_onnx() -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(tiny_onnx_model())
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Relu"]


def test_cpu_provider_really_runs() -> None:
    pytest.importorskip("onnxruntime")
    report = onnxruntime_providers()
    assert report["installed"] and report["usable"]["CPUExecutionProvider"] is None
    assert set(report["usable"]) == set(report["available"])


def test_env_json(capsys: pytest.CaptureFixture[str]) -> None:
    from crisis_tool.cli import run

    assert run(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report["cpu"]["features"], list) and report["cpu"]["model"]
    assert report["onnxruntime"]["usable"]["CPUExecutionProvider"] is None
    assert report["backends"]["onnxruntime"] is None  # the registry's own verdict: it runs here
    assert report["best"]["backend"].split()[0] in report["backends"]
    assert report["versions"]["numpy"] and isinstance(report["install"], list)


def test_env_text_fits_and_ends_with_next_step(capsys: pytest.CaptureFixture[str]) -> None:
    from crisis_tool.cli import run

    assert run(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("best here: ") and lines[2].startswith("CPU: ")
    assert lines[-1].startswith("next: crisis-tool bench --bundle BUNDLE --backends auto,")
