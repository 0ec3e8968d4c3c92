"""JSONL prediction output: one line per input record, in input order.

Each line: ``{"id", "label", "confidence", "probs": {label: prob}, "error": null | message}``; a failed
record has ``label``/``confidence`` null, ``probs`` {} and its error message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

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
    """Writes predictions as JSONL to a path or "-" (stdout); `flush()` after each batch for streams."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self._owned = self.target != "-"
        if self._owned:
            path = Path(target)
            if path.parent and not path.parent.is_dir():
                raise UsageError(f"output folder does not exist: {path.parent}")
            try:
                self._fh: IO[str] = open(path, "w", encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
        else:
            self._fh = sys.stdout
        self.count = 0
        self.errors = 0

    def write(self, pred: Any) -> None:
        self._fh.write(json.dumps(prediction_to_dict(pred), ensure_ascii=False) + "\n")
        self.count += 1
        self.errors += pred.error is not None

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
