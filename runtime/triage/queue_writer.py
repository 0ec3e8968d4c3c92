"""The `--review-queue FILE` of predict and label: the review queue's lines, each with what a reviewer needs.

Every output line is offered to a `ReviewQueue` (least confident first, one representative per near-duplicate
group, errors left out, optional `--review-budget`) with the record's `image` (its path; bytes are not kept)
and `text` added, so the review page can show the post. The other members of a representative's group are
listed under `group_members` ({id, image, text, tasks}), at most `MAX_MEMBERS` per group, so one click shows
them and a decision can apply to all of them.

Memory: the queue keeps one output line per group, and one small member dict ({id, image path, text, tasks},
a few hundred bytes) per answered post, so a run of n posts holds about n x 300 bytes plus one line per group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from crisis_tool.runtime.atomic_files import atomic_output
from crisis_tool.runtime.triage.review_queue import ReviewQueue

MAX_MEMBERS = 50


class ReviewQueueWriter:
    """Collects output lines (with their records) and writes the review queue file atomically."""

    def __init__(self, path: str | Path, budget: int | None = None, flagged_only: bool = False,
                 resolve: Callable[[str], str] | None = None) -> None:
        self.path = Path(path)
        self.queue = ReviewQueue(budget=budget, flagged_only=flagged_only, resolve=resolve)
        self._first: dict[str, dict[str, Any]] = {}  # group id -> its first member (in case others join)
        self._members: dict[str, list[dict[str, Any]]] = {}

    def add(self, line: Mapping[str, Any], record: Any | None = None) -> None:
        """Offer one output line; `record` (a runtime Record) gives the image path and text."""
        image = getattr(record, "image", None)
        member = {"id": line.get("id"), "image": image if isinstance(image, str) else None,
                  "text": getattr(record, "text", None), "tasks": line.get("tasks") or {}}
        self.queue.add({**line, "image": member["image"], "text": member["text"]})
        group = line.get("group")
        if not isinstance(group, str) or line.get("error"):
            return
        if group not in self._first:
            self._first[group] = member
            return
        members = self._members.setdefault(group, [self._first[group]])
        if len(members) < MAX_MEMBERS:
            members.append(member)

    @property
    def resolve(self) -> Callable[[str], str] | None:
        """Maps a group id a line was given to its group's id now (`NearDuplicateGrouper.resolve`), or None."""
        return self.queue.resolve

    @resolve.setter
    def resolve(self, resolve: Callable[[str], str] | None) -> None:
        self.queue.resolve = resolve

    def _final_members(self) -> dict[str, list[dict[str, Any]]]:
        """Members per group id as it is now: groups merged after their first lines pool their members."""
        resolve = self.queue.resolve or (lambda group: group)
        pooled: dict[str, list[dict[str, Any]]] = {}
        for group, first in self._first.items():
            members = pooled.setdefault(resolve(group), [])
            members += self._members.get(group, [first])[: MAX_MEMBERS - len(members)]
        return pooled

    def write(self) -> int:
        """Write the queue (each line with its group's other members); returns the number of lines."""
        import json

        lines = self.queue.lines()
        members_by_group = self._final_members()
        resolve = self.queue.resolve or (lambda group: group)
        with atomic_output(self.path) as fh:
            for line in lines:
                group = line.get("group")
                if isinstance(group, str):
                    line["group"] = group = resolve(group)
                members = members_by_group.get(group, []) if isinstance(group, str) else []
                line["group_members"] = [m for m in members if m["id"] != line.get("id")]
                line["group_size"] = max(1, len(members))
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        return len(lines)
