"""Backend registry: name -> import string, imported lazily so that only the chosen backend's
dependencies are needed (the "torch" reference backend lives in the toolkit and needs torch)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from crisis_tool.runtime.backends.base import Backend
from crisis_tool.runtime.errors import MissingDependencyError, UsageError

BACKENDS: dict[str, str] = {
    "onnxruntime": "crisis_tool.runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "crisis_tool.runtime.backends.tensorrt_backend:TensorRTBackend",
    "torch": "crisis_tool.torch_reference:TorchBackend",
}
_NEEDS = {
    "onnxruntime": "onnxruntime (pip install onnxruntime, or onnxruntime-gpu)",
    "tensorrt": "tensorrt and cuda-python (pip install 'crisis-tool[trt]') and an NVIDIA GPU",
    "torch": "torch (pip install 'crisis-tool[torch]')",
}

__all__ = ["BACKENDS", "Backend", "backend_class", "backend_unavailable_reason", "create_backend"]


def backend_class(name: str) -> type[Backend]:
    """Import and return the class registered as `name`; MissingDependencyError when its import fails."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    module_name, _, attr = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(f"backend {name!r} needs {_NEEDS[name]}: {exc}") from None
    return getattr(module, attr)


def backend_unavailable_reason(name: str) -> str | None:
    """None when backend `name` can be imported and its runtime probe passes, else a one-line reason."""
    try:
        cls = backend_class(name)
    except UsageError as exc:
        return str(exc)
    probe = getattr(cls, "unavailable_reason", None)
    return probe() if callable(probe) else None


def create_backend(
    name: str,
    bundle: Any,
    precision: str | None = None,
    providers: list[str] | None = None,
    **options: Any,
) -> Backend:
    """Instantiate backend `name` for `bundle` (a `Bundle`); extra options (e.g. threads) pass through.

    A backend class builds from `cls.from_bundle(bundle, ...)` when it has one, else `cls(bundle, ...)`.
    """
    cls = backend_class(name)
    factory = getattr(cls, "from_bundle", cls)
    kwargs = {"precision": precision, "providers": providers, **options}
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        dropped = [k for k, v in kwargs.items() if k not in params and v is not None]
        if dropped:
            raise UsageError(f"backend {name!r} does not take option(s) {', '.join(dropped)}")
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return factory(bundle, **kwargs)
