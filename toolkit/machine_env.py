"""What this machine offers crisis-tool: package versions, usable engines, CPU features, GPU, and advice.

Every fact is probed, not assumed: an onnxruntime provider counts as usable only when a one-node session created
with it really runs on it; OpenVINO devices come from `openvino.Core`; CPU features from /proc/cpuinfo flags.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import io
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("crisis-tool", "numpy", "pillow", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "open_clip_torch",
            "onnx", "tensorrt", "cuda-python", "ray", "matplotlib")
# /proc/cpuinfo flag -> what it is called here
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                "avx512_bf16": "AVX-512 bf16", "amx_tile": "AMX", "amx_bf16": "AMX bf16", "amx_int8": "AMX int8",
                "asimddp": "Arm dot product (int8)", "bf16": "Arm bf16"}


def package_versions() -> dict[str, str | None]:
    """Installed version of each package crisis-tool can use (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, architecture and the features that speed up int8/bf16 inference (from the kernel's flags)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
            elif key in ("model name", "hardware"):
                model = value.strip()
    return {"model": model, "arch": platform.machine(),
            "features": [name for flag, name in CPU_FEATURES.items() if flag in flags],
            "int8_dot": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}),
            "bf16": bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}), "amx": "amx_tile" in flags}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def tiny_onnx_model() -> bytes:
    """A serialized ONNX model `y = Relu(x)` for x: float[1, 4] (hand-encoded: the lean install has no onnx)."""
    shape = _field(2, _field(1, _field(1, 1)) + _field(1, _field(1, 4)))
    tensor_type = _field(1, _field(1, 1) + shape)  # elem_type FLOAT
    node = _field(1, b"x") + _field(2, b"y") + _field(4, b"Relu")
    graph = (_field(1, node) + _field(2, b"probe") + _field(11, _field(1, b"x") + _field(2, tensor_type))
             + _field(12, _field(1, b"y") + _field(2, tensor_type)))
    return _field(1, 8) + _field(8, _field(1, b"") + _field(2, 13)) + _field(7, graph)


def onnxruntime_providers() -> dict[str, Any]:
    """onnxruntime's compiled-in providers and, for each, whether a session on it really runs here."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as exc:
        return {"installed": False, "available": [], "usable": {}, "error": str(exc)}
    ort.set_default_logger_severity(4)
    usable: dict[str, str | None] = {}
    model = tiny_onnx_model()
    for provider in ort.get_available_providers():
        said = io.StringIO()  # onnxruntime prints its fallback ("EP Error ...") instead of raising
        try:
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                session = ort.InferenceSession(model, providers=[provider])
            if provider not in session.get_providers():
                reason = next((line.split("Please", 1)[1] for line in said.getvalue().splitlines()
                               if "Please" in line), "")
                raise RuntimeError(f"fell back to the CPU{': please' + reason if reason else ''}")
            out = session.run(None, {"x": np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)})[0]
            if out.tolist() != [[0.0, 0.0, 1.0, 2.0]]:
                raise RuntimeError(f"wrong answer {out.tolist()}")
            usable[provider] = None
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable", with its reason
            text = str(exc).strip()
            usable[provider] = text.splitlines()[0][:160] if text else type(exc).__name__
    ort.set_default_logger_severity(2)
    return {"installed": True, "version": ort.__version__, "available": ort.get_available_providers(),
            "usable": usable}


def openvino_devices() -> dict[str, Any]:
    """OpenVINO's devices (CPU, GPU, NPU) with their names, when OpenVINO is installed."""
    if importlib.util.find_spec("openvino") is None:
        return {"installed": False, "devices": {}}
    try:
        import openvino as ov

        core = ov.Core()
        devices = {d: str(core.get_property(d, "FULL_DEVICE_NAME")) for d in core.available_devices}
        return {"installed": True, "version": ov.__version__, "devices": devices}
    except Exception as exc:  # noqa: BLE001
        return {"installed": True, "devices": {}, "error": str(exc).splitlines()[0][:160]}


def gpu_info() -> dict[str, Any]:
    """NVIDIA GPU (nvidia-smi or a Jetson board), CUDA runtime library and TensorRT presence."""
    from crisis_tool.runtime.bench.machine_info import gpu_name

    jetson = None
    with contextlib.suppress(OSError):
        model = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
        jetson = model if "jetson" in model.lower() else None
    tensorrt = None
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tensorrt = metadata.version(dist)
            break
    if tensorrt is None and importlib.util.find_spec("tensorrt") is not None:
        tensorrt = "installed (version unknown)"
    return {"nvidia_gpu": gpu_name(), "jetson": jetson, "nvidia_smi": shutil.which("nvidia-smi") is not None,
            "cuda_runtime": ctypes.util.find_library("cudart") is not None or Path("/usr/local/cuda").is_dir(),
            "tensorrt": tensorrt}


def recommendation(cpu: dict[str, Any], ort: dict[str, Any], ov: dict[str, Any], gpu: dict[str, Any]
                   ) -> tuple[str, str]:
    """(backend and precision to try first here, why). `--backend auto` measures the choice for a bundle."""
    usable = {p for p, reason in ort.get("usable", {}).items() if reason is None}
    if gpu["tensorrt"] and (gpu["nvidia_gpu"] or gpu["jetson"]):
        return "tensorrt fp16", "NVIDIA GPU with TensorRT: build engines on this machine (export --format trt)"
    if "CUDAExecutionProvider" in usable:
        return "onnxruntime fp16", "onnxruntime's CUDA provider runs here"
    devices = ov.get("devices", {})
    if ov.get("installed") and any(d.startswith(("GPU", "NPU")) for d in devices):
        return "openvino int8", "OpenVINO sees an Intel GPU/NPU (--device GPU or NPU)"
    if ov.get("installed") and cpu["bf16"]:
        return "openvino bf16", "CPU with bf16 (AMX/AVX-512 bf16) under OpenVINO"
    if cpu["int8_dot"]:
        return "onnxruntime int8", "CPU with int8 dot-product instructions (VNNI/AMX/Arm dot product)"
    return "onnxruntime fp32", "no int8/bf16 acceleration or GPU found; int8 may still be smaller"


def install_advice(versions: dict[str, str | None], cpu: dict[str, Any], ort: dict[str, Any],
                   gpu: dict[str, Any]) -> list[str]:
    """What to install for more on this machine, one line each."""
    advice = []
    intel = "intel" in str(cpu["model"]).lower()
    if not versions["openvino"] and (intel or cpu["bf16"] or cpu["amx"]):
        advice.append("pip install 'crisis-tool[openvino]'  # OpenVINO: bf16/AMX on this CPU, Intel GPU/NPU")
    if (gpu["nvidia_gpu"] or gpu["jetson"]) and not gpu["tensorrt"]:
        advice.append("pip install 'crisis-tool[trt]'  # TensorRT engines for the NVIDIA GPU (Jetson: from "
                      "JetPack, see the README)")
    has_cuda_provider = "CUDAExecutionProvider" in ort.get("available", [])
    if (gpu["nvidia_gpu"] or gpu["jetson"]) and not has_cuda_provider:
        advice.append("onnxruntime-gpu  # the CUDA provider (Jetson: the JetPack wheel, see the README)")
    if not versions["matplotlib"]:
        advice.append("pip install 'crisis-tool[charts]'  # PNG charts (bench --plot, evaluate, reproduce)")
    if not versions["torch"]:
        advice.append("pip install 'crisis-tool[torch]'  # train, evaluate and export (not needed to predict)")
    return advice


def backend_status() -> dict[str, str | None]:
    """Each registered backend: None when it can run here, else why not (one line)."""
    from crisis_tool.runtime.backends.registry import backend_names, backend_unavailable_reason

    return {name: backend_unavailable_reason(name) for name in backend_names() if name != "auto"}


def machine_report() -> dict[str, Any]:
    """Everything `crisis-tool env` prints (and `--json` writes)."""
    versions = package_versions()
    cpu, ort, ov, gpu = cpu_info(), onnxruntime_providers(), openvino_devices(), gpu_info()
    best, why = recommendation(cpu, ort, ov, gpu)
    return {"platform": f"{platform.system()} {platform.release()} ({sys.platform})", "versions": versions,
            "cpu": cpu, "onnxruntime": ort, "openvino": ov, "gpu": gpu, "backends": backend_status(),
            "best": {"backend": best, "why": why}, "install": install_advice(versions, cpu, ort, gpu)}
