"""JSONL prediction output: one line per input record, in input order.

Each line: ``{"id", "label", "confidence", "probs": {label: prob}, "error": null | message}``; a failed
record has ``label``/``confidence`` null, ``probs`` {} and its error message.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import IO, Any

from crisis_tool.runtime.atomic_files import atomic_output
from crisis_tool.runtime.errors import UsageError


def prediction_to_dict(pred: Any) -> dict[str, Any]:
    """The output object of one `Prediction` (anything with id/label/confidence/probs/error)."""
    return {
        "id": pred.id,
        "label": pred.label,
        "confidence": None if pred.confidence is None else float(pred.confidence),
        "probs": {k: float(v) for k, v in (pred.probs or {}).items()},
        "error": pred.error,
    }


class JsonlWriter:
    """Writes predictions as JSONL to a file, "-" (stdout) or an existing FIFO/device (a stream).

    A file is written atomically (`atomic_output`): the path is replaced only when the writer closes without an
    error, so a failed run leaves an existing file untouched. With `keep_partial`, a Ctrl-C keeps the lines
    written so far (a valid prefix, whole lines, in input order) as ``<path>.partial`` (`partial_path`). A
    stream is written as it goes; `flush()` after each batch. Write errors (ENOSPC, EPIPE) are UsageErrors.
    """

    def __init__(self, target: str | Path, keep_partial: bool = False) -> None:
        self.target = str(target)
        self.count = 0
        self.errors = 0
        self.partial_path: Path | None = None
        self._partial_candidate: Path | None = None
        self._stack = contextlib.ExitStack()
        self._atomic = self.target != "-" and not is_stream_target(self.target)
        if not self._atomic:
            self._fh = sys.stdout if self.target == "-" else self._open_stream(self.target)
            return
        path = Path(target)
        if path.is_dir():
            raise UsageError(f"--output {path} is a folder; give a file name")
        if not path.parent.is_dir():
            raise UsageError(f"output folder does not exist: {path.parent}")
        partial = path.with_name(path.name + ".partial") if keep_partial else None
        self._fh = self._stack.enter_context(atomic_output(path, "w", keep_partial=partial))
        self._partial_candidate = partial

    @property
    def is_stream(self) -> bool:
        """True when lines reach the reader as they are written (stdout, a FIFO, a device)."""
        return not self._atomic

    def _open_stream(self, target: str) -> IO[str]:
        try:
            return self._stack.enter_context(open(target, "w", encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None

    def _failed(self, exc: OSError) -> UsageError:
        if self.target == "-" and isinstance(exc, BrokenPipeError):
            # Nobody reads stdout any more: point it at /dev/null so Python's exit flush stays quiet.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        name = "<stdout>" if self.target == "-" else self.target
        return UsageError(f"cannot write {name}: {exc.strerror or exc}")

    def write(self, pred: Any) -> None:
        try:
            self._fh.write(json.dumps(prediction_to_dict(pred), ensure_ascii=False) + "\n")
        except OSError as exc:
            raise self._failed(exc) from None
        self.count += 1
        self.errors += pred.error is not None

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        self.__exit__(None, None, None)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.flush()
        elif not self._atomic:
            with contextlib.suppress(OSError, UsageError):
                self.flush()
        try:
            self._stack.__exit__(exc_type, exc, tb)
        except OSError as error:
            raise self._failed(error) from None
        if self._atomic and exc_type is KeyboardInterrupt and self._partial_candidate is not None:
            if self._partial_candidate.exists():
                self.partial_path = self._partial_candidate


def is_stream_target(target: str | Path) -> bool:
    """True for an existing output that is not a regular file or folder (a FIFO, /dev/stdout, /dev/full)."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
