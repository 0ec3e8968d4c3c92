"""The append-only corrections file behind the review page: one fsynced line per decision, never rewritten.

On open, the existing decisions are read (so the page resumes where it stopped). A last line cut short by a
kill during its write (no newline, not JSON) was never acknowledged to the page; it is cut off before the
first new append, so the file stays one JSON object per line. Nothing complete is ever changed.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from crisis_tool.corrections import Correction, Key, latest_decisions, parse_corrections_text
from crisis_tool.runtime.errors import UsageError


def utc_now() -> str:
    """The current time as ISO 8601 UTC with a Z, to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _torn_tail_length(data: bytes) -> int:
    """Bytes after the last newline that do not form a JSON value (a write cut short), else 0."""
    tail = data[data.rfind(b"\n") + 1:]
    if not tail.strip():
        return 0
    try:
        json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return len(tail)
    return 0


class CorrectionStore:
    """Decisions already in `path` plus an append handle; `append` writes, flushes and fsyncs every line."""

    def __init__(self, path: str | Path, reviewer: str | None = None) -> None:
        self.path = Path(path)
        self.reviewer = reviewer
        self._lock = threading.Lock()
        if self.path.exists() and not self.path.is_file():
            raise UsageError(f"--labels {self.path} is not a regular file")
        if not self.path.parent.is_dir():
            raise UsageError(f"--labels folder does not exist: {self.path.parent}")
        data = self.path.read_bytes() if self.path.exists() else b""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.history: list[Correction] = parse_corrections_text(data, str(self.path))
        self.latest: dict[Key, Correction] = latest_decisions(self.history)
        created = not self.path.exists()
        torn = _torn_tail_length(data)
        if torn:
            warnings.warn(f"{self.path}: an unfinished last write ({torn} bytes) was cut off", stacklevel=2)
            os.truncate(self.path, len(data) - torn)
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the server's life
        kept = data[: len(data) - torn]
        if kept and not kept.endswith(b"\n"):
            self._write_line("")  # a complete last object without its newline: end it before appending
        if created:
            _fsync_dir(self.path.parent)

    def _write_line(self, text: str) -> None:
        self._fh.write(text + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def decide(self, id_: str, task: str, label: str, previous: str | None, via: str | None = None) -> Correction:
        """A new decision (accept when the label is the model's) stamped now; not yet written."""
        action = "accept" if label == previous else "correct"
        return Correction(id=id_, task=task, label=label, previous=previous, time=utc_now(), action=action,
                          reviewer=self.reviewer, via=via, source=str(self.path))

    def append(self, decisions: Iterable[Correction]) -> None:
        """Write each decision as one line, durable (fsync) before the next one and before returning."""
        with self._lock:
            for item in decisions:
                self._write_line(json.dumps(item.to_dict(), ensure_ascii=False))
                self.history.append(item)
                self.latest[item.key] = item

    def close(self) -> None:
        with self._lock:
            self._fh.close()
