"""Old option names kept for one release as hidden, deprecated aliases of the one name per idea."""

from __future__ import annotations

import warnings
from typing import TypeVar

from crisis_tool.runtime.errors import UsageError

T = TypeVar("T")


def deprecated_alias(value: T, old_value: T | None, old: str, new: str, unset: object = None) -> T:
    """`value`, or `old_value` (with a one-line deprecation warning) when only the old option `old` was given."""
    if old_value is None or old_value == unset:
        return value
    if value is not None and value != unset and value != old_value:
        raise UsageError(f"give {new} (or its old name {old}), not both")
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}", FutureWarning,
                  stacklevel=2)
    return old_value
