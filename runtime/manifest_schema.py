"""Reading the manifest's JSON safely: a typed field reader with one-line errors, and bundle-path checks.

`ManifestReader` turns every schema problem (a missing key, a list where an object belongs, a wrong type) into
one `BundleError` line naming the field. `unsafe_relpath` and `resolve_inside` keep every path a manifest names
relative and inside its bundle (no absolute paths, no `..`, no link that leads out).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from crisis_tool.runtime.errors import BundleError

T = TypeVar("T")


class ManifestReader:
    """Typed access to one JSON object of the manifest; every failure is one BundleError line."""

    def __init__(self, data: Any, where: str, origin: str) -> None:
        if not isinstance(data, dict):
            what = f"manifest field '{where}'" if where else "manifest"
            raise BundleError(f"{origin}: {what} must be a JSON object, not {_kind(data)}")
        self.data, self.where, self.origin = data, where, origin

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> BundleError:
        return BundleError(f"{self.origin}: manifest field '{self._path(key)}' {problem}")

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        bad_bool = isinstance(value, bool) and kind in (int, float)
        if bad_bool or not isinstance(value, kind) or (kind is float and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {names}, not {_kind(value)}")
        return value

    def child(self, key: str, default: Any = ...) -> ManifestReader:
        """The object at `key` (or `default` when absent and given)."""
        if key in self.data:
            value = self.data[key]
        elif default is ...:
            raise self.fail(key, "is missing")
        else:
            value = default
        return ManifestReader(value, self._path(key), self.origin)

    def mapping(self, key: str, parse: Callable[[ManifestReader], T], default: Any = ...) -> dict[str, T]:
        """A JSON object whose values are objects, each parsed by `parse`."""
        reader = self.child(key, default)
        return {name: parse(reader.child(name)) for name in reader.data}

    def relpath(self, key: str) -> str:
        value = self.get(key, str)
        problem = unsafe_relpath(value)
        if problem:
            raise self.fail(key, f"{value!r} {problem}")
        return value


def _kind(value: Any) -> str:
    return "null" if value is None else {list: "a list", dict: "an object", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}")


def unsafe_relpath(rel: str) -> str | None:
    """Why `rel` may not name a bundle file (absolute, `..`, empty, backslashes), or None when it is fine."""
    pure = PurePosixPath(rel)
    if not rel or rel.strip() != rel or "\\" in rel or "\x00" in rel:
        return "is not a plain relative path"
    if pure.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        return "is absolute (bundle paths are relative to the bundle)"
    if any(part in ("..", ".") for part in rel.split("/")) or "" in rel.split("/"):
        return "contains '..', '.' or an empty part"
    return None


def resolve_inside(root: Path, rel: str) -> Path:
    """`root/rel`, refused (BundleError) when it is unsafe or resolves (through links) outside `root`."""
    problem = unsafe_relpath(rel)
    if problem:
        raise BundleError(f"{root}: bundle path {rel!r} {problem}")
    path = Path(root) / rel
    base = Path(root).resolve()
    if not path.resolve().is_relative_to(base):
        raise BundleError(f"{root}: bundle path {rel} resolves outside the bundle")
    return path
