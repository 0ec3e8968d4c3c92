"""The user cache: compiled models (warm start) and `--backend auto`'s probe results, never inside a bundle.

Location: `$CRISIS_TOOL_CACHE_DIR`, else `$XDG_CACHE_HOME/crisis-tool`, else `~/.cache/crisis-tool`. Set
`CRISIS_TOOL_CACHE_DIR=off` to turn every cache off (a read-only home, a test). Entries are keyed by content
(the graph's sha256, the bundle manifest's digest), so a changed file never meets a stale entry; deleting the
folder is always safe. A cache that cannot be created or written is skipped, never an error.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV = "CRISIS_TOOL_CACHE_DIR"
_HASH_CHUNK = 1 << 20


def cache_root() -> Path | None:
    """The cache folder (not created here), or None when caching is off."""
    configured = os.environ.get(ENV)
    if configured:
        return None if configured.strip().lower() in ("off", "0", "none") else Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "crisis-tool"


def cache_dir(kind: str) -> Path | None:
    """`<root>/<kind>`, created (mode 0700) when possible; None when caching is off or it cannot be created."""
    root = cache_root()
    if root is None:
        return None
    folder = root / kind
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def graph_digest(bundle: object, path: str | Path) -> str:
    """The sha256 of a bundle graph: the manifest's entry (checked when the bundle was verified), else hashed."""
    root = Path(getattr(bundle, "root", "."))
    files = getattr(getattr(bundle, "manifest", None), "files", None) or {}
    try:
        rel = Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = None
    entry = files.get(rel) if rel is not None else None
    return str(entry.sha256) if entry is not None else file_sha256(path)


def cpu_key() -> str:
    """16 hex digits naming this CPU (model and feature flags): compiled kernels and layouts depend on them."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        text = os.uname().machine if hasattr(os, "uname") else ""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
