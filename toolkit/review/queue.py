"""The review queue (`--review-queue` output) as the review page sees it.

One JSON line per post: the prediction line of the output contract ("id", "tasks": {task: {"label",
"confidence", "probs", "needs_review"}}, "group", "duplicate_of") plus the input record's "image" (path)
and "text". An optional "group_members" lists the post's near-duplicates: [{"id", "text"?, "image"?,
"tasks"?}] or plain ids. Queue lines that share a "group" are members of each other too. Lines with an
"error" are skipped. A one-head line without "tasks" (top-level "label", "confidence", "probs") is read as
the bundle's one head. Posts are shown least confident first (minimum confidence over heads; stable).
Relative image paths resolve against --image-root, else the queue file's folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import DataError

MAX_QUEUE_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class HeadPrediction:
    label: str
    confidence: float
    probs: dict[str, float]


@dataclass(frozen=True)
class Member:
    """A near-duplicate of a queued post (another record of its group)."""

    id: str
    text: str | None
    image: Path | None
    labels: dict[str, str]  # the model's label per task, when known


@dataclass(frozen=True)
class QueueItem:
    index: int
    id: str
    text: str | None
    image: Path | None
    heads: dict[str, HeadPrediction]
    group: str | None
    duplicate_of: str | None
    members: tuple[Member, ...]
    line: int

    @property
    def min_confidence(self) -> float:
        return min(h.confidence for h in self.heads.values())

    def summary(self) -> dict[str, Any]:
        """What the page shows of this post (no server paths)."""
        return {
            "index": self.index, "id": self.id, "text": self.text, "has_image": self.image is not None,
            "group": self.group, "duplicate_of": self.duplicate_of, "group_size": 1 + len(self.members),
            "heads": {t: {"label": h.label, "confidence": h.confidence, "probs": h.probs}
                      for t, h in self.heads.items()},
            "members": [{"k": k, "id": m.id, "text": m.text, "has_image": m.image is not None, "labels": m.labels}
                        for k, m in enumerate(self.members)],
        }


class _Line:
    """Field access on one queue line with errors naming the line and field."""

    def __init__(self, obj: dict[str, Any], where: str) -> None:
        self.obj, self.where = obj, where

    def fail(self, name: str, problem: str) -> DataError:
        return DataError(f"{self.where}: field '{name}' {problem}")

    def text(self, name: str, required: bool = False) -> str | None:
        value = self.obj.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            raise self.fail(name, "must be a non-empty string" if required else "must be a string or null")
        return value


def _image_path(value: str | None, base: Path) -> Path | None:
    if value is None or not value.strip():
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def _head(raw: Any, task: str, labels: Sequence[str], line: _Line) -> HeadPrediction:
    name = f"tasks.{task}"
    if not isinstance(raw, dict):
        raise line.fail(name, "must be an object")
    label = raw.get("label")
    if label not in labels:
        raise line.fail(f"{name}.label", f"{label!r} is not a {task} label of the bundle ({', '.join(labels)})")
    conf = raw.get("confidence")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not math.isfinite(conf) or not 0 <= conf <= 1:
        raise line.fail(f"{name}.confidence", f"must be a number in [0, 1] (got {json.dumps(conf)[:40]})")
    probs = raw.get("probs") or {}
    if not isinstance(probs, dict) or not all(isinstance(v, (int, float)) for v in probs.values()):
        raise line.fail(f"{name}.probs", "must be an object of numbers")
    return HeadPrediction(str(label), float(conf), {str(k): float(v) for k, v in probs.items()})


def _heads(line: _Line, labels_by_task: Mapping[str, Sequence[str]]) -> dict[str, HeadPrediction]:
    tasks = line.obj.get("tasks")
    if tasks is None and "label" in line.obj and len(labels_by_task) == 1:
        tasks = {next(iter(labels_by_task)): line.obj}
    if not isinstance(tasks, dict) or not tasks:
        raise line.fail("tasks", "must be a non-empty object {task: {label, confidence, probs}}")
    heads = {}
    for task, raw in tasks.items():
        if task not in labels_by_task:
            raise line.fail(f"tasks.{task}", f"is not a head of the bundle (it has {', '.join(labels_by_task)})")
        heads[task] = _head(raw, task, labels_by_task[task], line)
    return {t: heads[t] for t in labels_by_task if t in heads}  # the bundle's head order


def _members(line: _Line, base: Path) -> list[Member]:
    raw = line.obj.get("group_members") or []
    if not isinstance(raw, list):
        raise line.fail("group_members", "must be a list")
    out = []
    for k, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"id": entry}
        if not isinstance(entry, dict):
            raise line.fail(f"group_members[{k}]", "must be an id or an object with an id")
        sub = _Line(entry, f"{line.where} group_members[{k}]")
        tasks = entry.get("tasks") if isinstance(entry.get("tasks"), dict) else {}
        labels = {t: v["label"] for t, v in tasks.items() if isinstance(v, dict) and isinstance(v.get("label"), str)}
        out.append(Member(str(sub.text("id", required=True)), sub.text("text"),
                          _image_path(sub.text("image"), base), labels))
    return out


def parse_queue(lines: Sequence[bytes], source: str, labels_by_task: Mapping[str, Sequence[str]],
                image_base: Path) -> list[QueueItem]:
    """The queue's posts, least confident first, each with its group members; DataError naming line and field."""
    rows: list[tuple[int, dict[str, Any], _Line]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{source} line {number}"
        if len(raw) > MAX_QUEUE_LINE_BYTES:
            raise DataError(f"{where}: line longer than {MAX_QUEUE_LINE_BYTES} bytes")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{where}: not a JSON line ({exc})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object")
        if obj.get("error"):
            continue
        line = _Line(obj, where)
        rid = str(line.text("id", required=True))
        if rid in seen:
            raise line.fail("id", f"{rid!r} repeats line {seen[rid]}")
        seen[rid] = number
        rows.append((number, obj, line))
    items = [_item(number, line, labels_by_task, image_base) for number, _, line in rows]
    items.sort(key=lambda it: it.min_confidence)
    return _with_queue_groups([replace(it, index=i) for i, it in enumerate(items)])


def _item(number: int, line: _Line, labels_by_task: Mapping[str, Sequence[str]], base: Path) -> QueueItem:
    return QueueItem(index=0, id=str(line.text("id", required=True)), text=line.text("text"),
                     image=_image_path(line.text("image"), base), heads=_heads(line, labels_by_task),
                     group=line.text("group"), duplicate_of=line.text("duplicate_of"),
                     members=tuple(_members(line, base)), line=number)


def _with_queue_groups(items: list[QueueItem]) -> list[QueueItem]:
    """Add the other queued posts of the same group to each post's members (no id twice)."""
    by_group: dict[str, list[QueueItem]] = {}
    for it in items:
        if it.group:
            by_group.setdefault(it.group, []).append(it)
    out = []
    for it in items:
        known = {it.id} | {m.id for m in it.members}
        extra = [Member(o.id, o.text, o.image, {t: h.label for t, h in o.heads.items()})
                 for o in by_group.get(it.group or "", []) if o.id not in known]
        out.append(replace(it, members=it.members + tuple(extra)) if extra else it)
    return out


def load_queue(path: str | Path, labels_by_task: Mapping[str, Sequence[str]],
               image_root: str | Path | None = None) -> list[QueueItem]:
    """Read a review queue file (see the module docstring); DataError when unreadable or malformed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read review queue {path}: {exc.strerror or exc}") from None
    base = Path(image_root) if image_root is not None else path.resolve().parent
    return parse_queue(data.split(b"\n"), str(path), labels_by_task, base)
