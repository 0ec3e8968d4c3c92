"""Backends: one interface (`Backend`) and one registry (name -> class, imported lazily)."""

from __future__ import annotations

from crisis_tool.runtime.backends.base import Backend
from crisis_tool.runtime.backends.registry import (
    REGISTRY,
    backend_class,
    backend_names,
    backend_unavailable_reason,
    backend_variants,
    create_backend,
    register_backend,
)

__all__ = [
    "REGISTRY", "Backend", "backend_class", "backend_names", "backend_unavailable_reason", "backend_variants",
    "create_backend", "register_backend",
]
