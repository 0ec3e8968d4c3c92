"""JSONL prediction output: one line per input record, in input order.

Each line (see README "Output schema"):
``{"id", "tasks": {task: {"label", "confidence", "probs": {label: prob}, "needs_review"}}, "needs_review",
"group", "duplicate_of", "error": null | message}``. A one-head bundle also keeps that head's ``label``,
``confidence`` and ``probs`` at the top level. A failed record has ``tasks`` {} (and null label/confidence).
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


def task_to_dict(answer: Any) -> dict[str, Any]:
    """One head's answer (a `TaskPrediction`) as JSON data."""
    out = {"label": answer.label, "confidence": float(answer.confidence),
           "probs": {k: float(v) for k, v in answer.probs.items()}, "needs_review": answer.needs_review}
    if getattr(answer, "explain", None) is not None:
        out["explain"] = dict(answer.explain)
    return out


def prediction_to_dict(pred: Any, one_head: bool | None = None) -> dict[str, Any]:
    """The output object of one `Prediction`.

    `one_head` adds the top-level label/confidence/probs of the only head (default: when the prediction has
    at most one task; an error line of a one-head bundle keeps them as null).
    """
    tasks = {task: task_to_dict(answer) for task, answer in (pred.tasks or {}).items()}
    out: dict[str, Any] = {"id": pred.id}
    if one_head if one_head is not None else len(tasks) <= 1:
        out |= {"label": pred.label, "confidence": None if pred.confidence is None else float(pred.confidence),
                "probs": {k: float(v) for k, v in (pred.probs or {}).items()}}
    out |= {"tasks": tasks, "needs_review": bool(pred.needs_review), "group": pred.group,
            "duplicate_of": pred.duplicate_of, "error": pred.error}
    return out


class JsonlWriter:
    """Writes predictions as JSONL to a file, "-" (stdout) or an existing FIFO/device (a stream).

    A file is written atomically (`atomic_output`): the path is replaced only when the writer closes without an
    error, so a failed run leaves an existing file untouched. With `keep_partial`, a Ctrl-C keeps the lines
    written so far (a valid prefix, whole lines, in input order) as ``<path>.partial`` (`partial_path`). A
    stream is written as it goes; `flush()` after each batch. Write errors (ENOSPC, EPIPE) are UsageErrors.
    """

    def __init__(self, target: str | Path, keep_partial: bool = False, one_head: bool | None = None) -> None:
        self.target = str(target)
        self.one_head = one_head  # a one-head bundle's lines keep top-level label/confidence/probs
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

    def write(self, pred: Any, extra: dict[str, Any] | None = None) -> None:
        """Write one prediction's line (`extra` fields, e.g. the record's text for a review queue, appended)."""
        line = prediction_to_dict(pred, self.one_head) | (extra or {})
        try:
            self._fh.write(json.dumps(line, ensure_ascii=False) + "\n")
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
