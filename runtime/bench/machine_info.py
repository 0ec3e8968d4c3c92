"""What machine a benchmark ran on: CPU model, cores, GPU, library versions and a measured fp32 GEMM roofline.

Nothing here imports torch or tensorrt: versions are read from the installed package metadata, and the GPU is
found with nvidia-smi (desktop/server) or the device tree (Jetson).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

_PACKAGES = {
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs"),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
}


def cpu_model() -> str:
    """The CPU's marketing name (x86 /proc/cpuinfo), the board name on a Jetson, or platform.processor()."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError):
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, which containers shrink), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_name() -> str | None:
    """Name of the first NVIDIA GPU, or None when there is none."""
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
            if out:
                return out.splitlines()[0].strip()
    with contextlib.suppress(OSError):
        model = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
        if "jetson" in model.lower() or "nvidia" in model.lower():
            return model
    return None


def package_version(name: str) -> str | None:
    """Installed version of a package (any of its distribution names), or None."""
    for dist in _PACKAGES.get(name, (name,)):
        with contextlib.suppress(md.PackageNotFoundError):
            return md.version(dist)
    return None


def blas_name() -> str:
    """numpy's BLAS, e.g. "scipy-openblas 0.3.31" (what the GEMM roofline measures)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - numpy < 1.26 has no dict mode
        return "unknown BLAS"


def set_blas_threads(threads: int) -> bool:
    """Limit numpy's BLAS to `threads` threads (threadpoolctl, else OpenBLAS's C API); True when it worked."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
        return True
    except ImportError:
        pass
    with contextlib.suppress(OSError):
        maps = Path("/proc/self/maps").read_text()
        libs = {line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower() and "/" in line}
        for lib in sorted(libs):
            handle = ctypes.CDLL(lib)
            for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                           "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
                func = getattr(handle, symbol, None)
                if func is not None:
                    func(ctypes.c_int(threads))
                    return True
    return False


def gemm_gflops(threads: int | None = None, sizes: tuple[int, ...] = (1024, 1536, 2048),
                seconds: float = 1.5) -> float:
    """Measured fp32 GEMM throughput (GFLOP/s, 2*n^3 per n x n matmul): best of repeated numpy matmuls."""
    if threads:
        set_blas_threads(threads)
    rng = np.random.default_rng(0)
    best = 0.0
    per_size = seconds / len(sizes)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), dtype=np.float32)
        np.matmul(a, b, out=out)  # warm-up (thread pool start, page faults)
        end = time.perf_counter() + per_size
        runs = 0
        while runs < 2 or time.perf_counter() < end:
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            best = max(best, 2.0 * n**3 / (time.perf_counter() - start) / 1e9)
            runs += 1
    return best


def load_average() -> str | None:
    """1/5/15-minute load averages: other work on a shared machine skews every number."""
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return None


def machine_header(threads: int, measure_gemm: bool = True, gemm_seconds: float = 1.5) -> dict[str, Any]:
    """The benchmark header: machine, threads used, versions, BLAS and (optionally) the GEMM roofline."""
    return {
        "cpu": cpu_model(),
        "cpu_count": cpu_count(),
        "threads": threads,
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": gpu_name(),
        "load_average": load_average(),
        "versions": {name: package_version(name) for name in _PACKAGES},
        "blas": blas_name(),
        "gemm_gflops": round(gemm_gflops(threads, seconds=gemm_seconds), 2) if measure_gemm else None,
    }
