"""The feature cache on disk: append-only shards of embeddings, safe under Ctrl-C, crashes and concurrent runs.

One store is a folder (`<cache>/<encoder id>/image/`, `.../text/`) of shards named
`<time ns>-<pid>-<random>.npz`, each holding `keys` (str, n) and `embeds` (float32, n x dim). A shard is written
once, atomically (a temporary file in the same folder, renamed into place when complete), and never changed:

* encoding saves a shard every `save_every` new entries, every `save_interval_s` seconds and when it ends,
  even by Ctrl-C, so an interrupted run keeps what it encoded;
* concurrent writers never share a file name, so their entries merge on the next load;
* a shard that cannot be read (truncated, not an npz, wrong shape or width) is a cache miss: it is moved aside
  as `*.npz.corrupt`, logged and listed in `problems`, and its entries are encoded again. Rows holding NaN or
  inf are refused the same way; a shard's finite rows are kept in a new shard.

More than `compact_above` shards are merged into one under an exclusive file lock (`.lock`); loads hold a
shared lock, so a load never sees a half-merged folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from crisis_tool.runtime.atomic_files import atomic_output
from crisis_tool.runtime.errors import DataError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, no merging
    fcntl = None  # type: ignore[assignment]

SHARD_SUFFIX = ".npz"
CORRUPT_SUFFIX = ".corrupt"


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class CorruptShard(Exception):
    """A shard that cannot be used as it is; the message says why."""


def _read_shard(path: Path, dim: int | None) -> tuple[list[str], np.ndarray, int]:
    """(keys, finite float32 rows, number of non-finite rows dropped); CorruptShard when unusable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, embeds = data["keys"], data["embeds"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CorruptShard(f"unreadable ({type(exc).__name__}: {exc})") from None
    if keys.ndim != 1 or keys.dtype.kind != "U":
        raise CorruptShard(f"keys are {keys.dtype} with shape {keys.shape}, not a list of strings")
    if embeds.ndim != 2 or embeds.dtype.kind != "f" or len(embeds) != len(keys):
        raise CorruptShard(f"embeddings are {embeds.dtype} {embeds.shape} for {len(keys)} keys")
    if dim is not None and len(keys) and embeds.shape[1] != dim:
        raise CorruptShard(f"embeddings are {embeds.shape[1]} wide, the encoder gives {dim}")
    finite = np.isfinite(embeds).all(axis=1)
    kept = [k for k, ok in zip(keys.tolist(), finite) if ok]
    return kept, embeds[finite].astype(np.float32), int((~finite).sum())


class EmbeddingStore:
    """A persistent key -> embedding map for one encoder and one kind ("image" or "text")."""

    def __init__(self, folder: Path, dim: int | None = None, save_every: int = 1024,
                 save_interval_s: float = 60.0, compact_above: int = 32,
                 log: Callable[[str], None] = log_to_stderr) -> None:
        self.folder = Path(folder)
        self.dim = dim
        self.save_every = save_every
        self.save_interval_s = save_interval_s
        self.compact_above = compact_above
        self.log = log
        self.table: dict[str, np.ndarray] = {}
        self.problems: list[str] = []
        self._pending: dict[str, np.ndarray] = {}
        self._last_save = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock(shared=True):
            for path in self._shards():
                self._load(path)

    # ---------------------------------------------------------------- reading
    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{SHARD_SUFFIX}"))

    def _load(self, path: Path) -> None:
        try:
            keys, embeds, dropped = _read_shard(path, self.dim)
        except FileNotFoundError:
            return
        except CorruptShard as exc:
            self._problem(path, str(exc), salvage=None)
            return
        for key, row in zip(keys, embeds):
            self.table.setdefault(key, row)
        if dropped:
            self._problem(path, f"{dropped} entries hold NaN or inf", salvage=(keys, embeds))

    def _problem(self, path: Path, why: str, salvage: tuple[list[str], np.ndarray] | None) -> None:
        """Move a bad shard aside (keeping its good rows in a new shard) and report it."""
        if salvage is not None and salvage[0]:
            self._write_shard(salvage[0], salvage[1])
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        with contextlib.suppress(OSError):
            path.replace(aside)
        message = f"feature cache: {path} is corrupt ({why}); moved aside to {aside.name}, its entries will be " \
                  "encoded again"
        self.problems.append(message)
        self.log(message)

    def __len__(self) -> int:
        return len(self.table)

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.table]

    def stack(self, keys: Sequence[str]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.dim or 0), np.float32)
        return np.stack([self.table[k] for k in keys]).astype(np.float32)

    # ---------------------------------------------------------------- writing
    def add(self, keys: Sequence[str], embeds: np.ndarray) -> None:
        """Add finite embeddings (DataError for NaN/inf); saves a shard when enough is pending."""
        embeds = np.asarray(embeds, dtype=np.float32)
        if embeds.ndim != 2 or len(embeds) != len(keys):
            raise ValueError(f"{len(keys)} keys for embeddings of shape {embeds.shape}")
        if not np.isfinite(embeds).all():
            raise DataError("refusing to cache non-finite (NaN or inf) embeddings")
        for key, row in zip(keys, embeds):
            self.table[key] = row
            self._pending[key] = row
        due = time.monotonic() - self._last_save >= self.save_interval_s
        if len(self._pending) >= self.save_every or due:
            self.save()

    def save(self) -> None:
        """Write the entries added since the last save as one new shard (nothing when none are pending)."""
        if self._pending:
            self._write_shard(list(self._pending), np.stack(list(self._pending.values())))
            self._pending.clear()
        self._last_save = time.monotonic()

    def _write_shard(self, keys: list[str], embeds: np.ndarray) -> Path:
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SHARD_SUFFIX}"
        path = self.folder / name
        with atomic_output(path, "wb") as fh:
            np.savez(fh, keys=np.array(keys, dtype=str), embeds=np.asarray(embeds, dtype=np.float32))
        return path

    def compact(self, force: bool = False) -> None:
        """Merge all shards into one when there are more than `compact_above` (or `force`)."""
        if fcntl is None:
            return
        with self._lock(shared=False):
            shards = self._shards()
            if len(shards) <= 1 or (len(shards) <= self.compact_above and not force):
                return
            merged: dict[str, np.ndarray] = {}
            done: list[Path] = []
            for path in shards:
                try:
                    keys, embeds, dropped = _read_shard(path, self.dim)
                except (CorruptShard, FileNotFoundError):
                    continue  # left for the next load to report and move aside
                if dropped:
                    continue
                done.append(path)
                for key, row in zip(keys, embeds):
                    merged.setdefault(key, row)
                    self.table.setdefault(key, row)
            if len(done) <= 1:
                return
            self._write_shard(list(merged), np.stack(list(merged.values())))
            for path in done:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self, shared: bool) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
