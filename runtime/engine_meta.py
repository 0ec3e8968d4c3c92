"""Compatibility of a serialized TensorRT engine with this machine (engines are not portable).

An engine's manifest entry records the TensorRT version, GPU name and compute capability it was built with;
an engine built elsewhere must be rebuilt on the target from the bundle's ONNX graphs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crisis_tool.runtime.errors import BundleError

ENGINE_META_KEYS = ("trt_version", "gpu_name", "compute_capability")


def rebuild_command(bundle: str = "BUNDLE_DIR") -> str:
    return f"crisis-tool export --from-bundle {bundle} --format trt"


def check_engine_compat(
    entry: Mapping[str, Any],
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    bundle: str = "BUNDLE_DIR",
) -> None:
    """Raise `BundleError` with the rebuild command when the engine was built elsewhere."""
    current = {
        "trt_version": str(trt_version),
        "gpu_name": str(gpu_name),
        "compute_capability": str(compute_capability),
    }
    missing = [k for k in ENGINE_META_KEYS if k not in entry]
    name = entry.get("file", "engine")
    if missing:
        raise BundleError(
            f"{name}: engine entry lacks {', '.join(missing)}; rebuild it: {rebuild_command(bundle)}"
        )
    diffs = [f"{k} {entry[k]!s} != {current[k]}" for k in ENGINE_META_KEYS if str(entry[k]) != current[k]]
    if diffs:
        raise BundleError(
            f"{name} was built for another machine ({'; '.join(diffs)}); "
            f"rebuild it here: {rebuild_command(bundle)}"
        )
