"""The backend registry: a name -> the class that runs it, imported only when chosen.

Built-in rows name a module of the runtime. A backend that lives elsewhere (the PyTorch reference in the
toolkit, or another package) is found through the `crisis_tool.backends` entry-point group, so the runtime never
names it; its row here, if any, only adds an install hint and its precisions. `predict`, `bench` and their
`--help` list `backend_names()`. Adding a backend is one module with a `Backend` subclass and one row (or one
entry point, or a `register_backend` call).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from importlib import metadata
from typing import TYPE_CHECKING, Any

from crisis_tool.runtime.backends.base import Backend
from crisis_tool.runtime.errors import MissingDependencyError, UsageError
from crisis_tool.runtime.model_spec import PRECISIONS

if TYPE_CHECKING:
    from crisis_tool.runtime.bundle import Bundle

ENTRY_POINT_GROUP = "crisis_tool.backends"


@dataclass(frozen=True)
class BackendEntry:
    """One registered backend: `target` is "module:Class", a class, or None (found by entry point)."""

    name: str
    target: str | type[Backend] | None
    install_hint: str = ""
    precisions: tuple[str, ...] = PRECISIONS


REGISTRY: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry("onnxruntime", "crisis_tool.runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
                     "onnxruntime (pip install onnxruntime, or onnxruntime-gpu)"),
        BackendEntry("tensorrt", "crisis_tool.runtime.backends.tensorrt_backend:TensorRTBackend",
                     "tensorrt and cuda-python (pip install 'crisis-tool[trt]') and an NVIDIA GPU"),
        BackendEntry("openvino", "crisis_tool.runtime.backends.openvino_backend:OpenVinoBackend",
                     "openvino (pip install 'crisis-tool[openvino]')", ("fp32", "bf16", "fp16", "int8")),
        BackendEntry("torch", None, "torch (pip install 'crisis-tool[torch]')", ("fp32",)),
        BackendEntry("auto", "crisis_tool.runtime.backends.auto:AutoBackend", "its engines", ("fp32",)),
    )
}
_entry_points_loaded = False


def register_backend(name: str, target: str | type[Backend], install_hint: str = "",
                     precisions: tuple[str, ...] = PRECISIONS) -> None:
    """Add (or replace) a backend: `target` is a `Backend` subclass or "module:Class"."""
    REGISTRY[name] = BackendEntry(name, target, install_hint, tuple(precisions))


def _load_entry_points() -> None:
    """Fill targets from the `crisis_tool.backends` entry points (once); rows not in REGISTRY are added."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        known = REGISTRY.get(ep.name)
        if known is None:
            REGISTRY[ep.name] = BackendEntry(ep.name, ep.value, f"the package that provides {ep.value}")
        elif known.target is None:
            REGISTRY[ep.name] = replace(known, target=ep.value)


def backend_names() -> list[str]:
    """Every registered backend name, built-in rows first."""
    _load_entry_points()
    return list(REGISTRY)


def backend_entry(name: str) -> BackendEntry:
    _load_entry_points()
    if name not in REGISTRY:
        raise UsageError(f"unknown backend {name!r} (choose from {', '.join(REGISTRY)})")
    return REGISTRY[name]


def backend_variants() -> dict[str, tuple[str, str]]:
    """bench's choices: "name" (fp32) and "name-precision" for every other precision -> (name, precision)."""
    out: dict[str, tuple[str, str]] = {}
    for name in backend_names():
        for precision in REGISTRY[name].precisions:
            out[name if precision == "fp32" else f"{name}-{precision}"] = (name, precision)
    return out


def backend_class(name: str) -> type[Backend]:
    """Import and return the class registered as `name`; MissingDependencyError when its import fails."""
    entry = backend_entry(name)
    target = entry.target
    if target is None:
        raise MissingDependencyError(f"backend {name!r} needs {entry.install_hint} (it is not installed)")
    if isinstance(target, type):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(f"backend {name!r} needs {entry.install_hint}: {exc}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise MissingDependencyError(f"backend {name!r}: {target} is not a Backend class")
    return cls


def backend_unavailable_reason(name: str) -> str | None:
    """None when backend `name` can be imported and its runtime probe passes, else a one-line reason."""
    try:
        return backend_class(name).unavailable_reason()
    except UsageError as exc:
        return str(exc)


def create_backend(name: str, bundle: Bundle, **options: Any) -> Backend:
    """Backend `name` for `bundle`: `precision`, `threads` and backend options (None = not given)."""
    return backend_class(name).from_bundle(bundle, **options)
