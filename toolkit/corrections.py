"""Human corrections (`corrections.jsonl`, written by `crisis-tool review`) and their merge over split labels.

One JSON object per line, append-only; the last decision per (id, task) wins:

    {"id": "p1", "task": "damage", "label": "mild_damage", "previous": "severe_damage",
     "time": "2026-12-06T05:30:00Z", "action": "correct" | "accept", "reviewer": null | "name"}

An optional "via" names the post whose correction was applied to this group member. A bad line is a
`DataError` naming the file, the line and the field. `merge_corrections` lays the human labels over the split
labels by (record id, task): the human label wins.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import DataError

ACTIONS = ("correct", "accept")
REQUIRED_FIELDS = ("id", "task", "label", "previous", "time", "action")
OPTIONAL_FIELDS = ("reviewer", "via")
MAX_LINE_BYTES = 1 << 16

Key = tuple[str, str]


@dataclass(frozen=True)
class Correction:
    """One reviewer decision. `source` and `line` say where it was read (not written back)."""

    id: str
    task: str
    label: str
    previous: str | None
    time: str
    action: str
    reviewer: str | None = None
    via: str | None = None
    source: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def key(self) -> Key:
        return (self.id, self.task)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one corrections.jsonl line ("via" only when set)."""
        out: dict[str, Any] = {"id": self.id, "task": self.task, "label": self.label, "previous": self.previous,
                               "time": self.time, "action": self.action, "reviewer": self.reviewer}
        if self.via is not None:
            out["via"] = self.via
        return out

    def where(self) -> str:
        return f"{self.source or 'corrections'} line {self.line}"


@dataclass(frozen=True)
class MergeResult:
    """`merged`: the labels with human labels laid over them; `used`: decisions (last per key) that matched a
    labelled (id, task); `changed`: how many of those changed the label; `unmatched`: keys not in the labels."""

    merged: dict[Key, str]
    used: int
    changed: int
    unmatched: tuple[Key, ...] = ()

    def summary(self) -> str:
        text = f"{self.used} used, {self.changed} changed"
        return text + (f", {len(self.unmatched)} not in the split (ignored)" if self.unmatched else "")


def _text_field(obj: Mapping[str, Any], name: str, where: str, nullable: bool = False) -> str | None:
    value = obj.get(name)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.strip():
        want = "a non-empty string" + (" or null" if nullable else "")
        raise DataError(f"{where}: field '{name}' must be {want} (got {json.dumps(value)[:60]})")
    return value


def parse_correction(obj: Any, source: str = "corrections", line: int = 0) -> Correction:
    """A validated `Correction` from one decoded JSON line; DataError naming the line and the field."""
    where = f"{source} line {line}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise DataError(f"{where}: field '{name}' is missing")
    unknown = sorted(set(obj) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise DataError(f"{where}: field '{unknown[0]}' is not a corrections field")
    action = _text_field(obj, "action", where)
    if action not in ACTIONS:
        raise DataError(f"{where}: field 'action' must be one of {', '.join(ACTIONS)} (got {action!r})")
    time = _text_field(obj, "time", where)
    try:
        datetime.fromisoformat(str(time).replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"{where}: field 'time' is not an ISO 8601 time (got {time!r})") from None
    return Correction(
        id=str(_text_field(obj, "id", where)), task=str(_text_field(obj, "task", where)),
        label=str(_text_field(obj, "label", where)), previous=_text_field(obj, "previous", where, nullable=True),
        time=str(time), action=str(action), reviewer=_text_field(obj, "reviewer", where, nullable=True),
        via=_text_field(obj, "via", where, nullable=True), source=source, line=line)


def parse_corrections_text(data: bytes, source: str = "corrections") -> list[Correction]:
    """Every correction in the bytes of a corrections file, in file order (blank lines skipped).

    A last line without its newline that is not JSON is a write cut short (the process was killed before the
    decision was acknowledged): it is skipped with a warning.
    """
    out: list[Correction] = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(f"{source} line {number}: line longer than {MAX_LINE_BYTES} bytes")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if number == len(lines):
                warnings.warn(f"{source} line {number}: unfinished last write skipped", stacklevel=2)
                break
            raise DataError(f"{source} line {number}: not a JSON line ({exc})") from None
        out.append(parse_correction(obj, source, number))
    return out


def read_corrections(path: str | Path) -> list[Correction]:
    """Every correction in one corrections.jsonl, in file order; DataError when missing or malformed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read corrections file {path}: {exc.strerror or exc}") from None
    return parse_corrections_text(data, str(path))


def read_corrections_files(paths: Iterable[str | Path]) -> list[Correction]:
    """The corrections of several files, in the order given: a later file's decision wins."""
    out: list[Correction] = []
    for path in paths:
        out.extend(read_corrections(path))
    return out


def latest_decisions(corrections: Iterable[Correction]) -> dict[Key, Correction]:
    """The last decision per (id, task), in the order the keys were first decided."""
    latest: dict[Key, Correction] = {}
    for item in corrections:
        latest[item.key] = item
    return latest


def check_labels(corrections: Iterable[Correction], labels_by_task: Mapping[str, Sequence[str]]) -> None:
    """DataError naming the line when a correction's task or label is not one the model knows."""
    for item in corrections:
        if item.task not in labels_by_task:
            raise DataError(f"{item.where()}: field 'task' {item.task!r} is not one of "
                            f"{', '.join(labels_by_task)}")
        if item.label not in labels_by_task[item.task]:
            raise DataError(f"{item.where()}: field 'label' {item.label!r} is not a {item.task} label "
                            f"({', '.join(labels_by_task[item.task])})")


def merge_corrections(labels: Mapping[Key, str], corrections: Iterable[Correction],
                      labels_by_task: Mapping[str, Sequence[str]] | None = None) -> MergeResult:
    """Lay the human labels over `labels` ({(record id, task): label}); the last decision per key wins.

    A decision whose key is not in `labels` is left out and listed in `unmatched`. With `labels_by_task`,
    a decision naming an unknown task or label is a DataError naming its line.
    """
    items = list(corrections)
    if labels_by_task is not None:
        check_labels(items, labels_by_task)
    merged = dict(labels)
    used = changed = 0
    unmatched: list[Key] = []
    for key, item in latest_decisions(items).items():
        if key not in merged:
            unmatched.append(key)
            continue
        used += 1
        if merged[key] != item.label:
            changed += 1
            merged[key] = item.label
    return MergeResult(merged=merged, used=used, changed=changed, unmatched=tuple(unmatched))
