"""The review queue: the output lines a person should look at first, least confident first.

From the output lines (dicts as `crisis_tool.runtime.writers.prediction_to_dict` makes them):

1. lines with an `error`, or without any head confidence, are left out;
2. a line's score is the minimum `confidence` over its heads (`tasks`), or the top-level `confidence` of a
   line without `tasks`;
3. one line per near-duplicate `group` is kept: the least confident (on a tie, the first seen); a line without
   a group is its own group. With `resolve` (`NearDuplicateGrouper.resolve`), groups merged after a line was
   written are joined too;
4. with `flagged_only`, only lines with `needs_review: true` are kept;
5. the lines are sorted by score ascending, ties in input order, and cut to the first `budget` lines.

`ReviewQueue` collects lines one at a time and keeps, per group, only the current representative, as its
compact JSON text (about the size of the output line), so the memory is one line per group, not per post. It
writes with `atomic_output`: a queue file is complete or absent, never half written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from crisis_tool.runtime.atomic_files import atomic_output
from crisis_tool.runtime.errors import UsageError


def queue_score(line: Mapping[str, Any]) -> float | None:
    """The minimum confidence over the line's heads; None for an error line or a line with no confidence."""
    if line.get("error"):
        return None
    tasks = line.get("tasks")
    if isinstance(tasks, Mapping) and tasks:
        values = [t.get("confidence") for t in tasks.values() if isinstance(t, Mapping)]
    else:
        values = [line.get("confidence")]
    scores = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    scores = [s for s in scores if math.isfinite(s)]
    return min(scores) if scores else None


class ReviewQueue:
    """Collects output lines and gives the review queue (module docstring) as dicts or as an atomic JSONL file."""

    def __init__(
        self, budget: int | None = None, resolve: Callable[[str], str] | None = None, flagged_only: bool = False
    ) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise UsageError(f"review queue budget must be a non-negative integer, got {budget!r}")
        self.budget = budget
        self.resolve = resolve
        self.flagged_only = flagged_only
        self._best: dict[object, tuple[float, int, str]] = {}  # group -> (score, input position, JSON text)
        self._seen = 0

    def add(self, line: Mapping[str, Any]) -> None:
        """Consider one output line (lines must come in output order for ties to follow it)."""
        position = self._seen
        self._seen += 1
        score = queue_score(line)
        if score is None or (self.flagged_only and line.get("needs_review") is not True):
            return
        group = line.get("group")
        key: object = group if isinstance(group, str) else ("line", position)
        best = self._best.get(key)
        if best is None or score < best[0]:
            self._best[key] = (score, position, json.dumps(dict(line), ensure_ascii=False))

    def _ordered(self) -> list[tuple[float, int, str]]:
        best = self._best
        if self.resolve is not None:
            merged: dict[object, tuple[float, int, str]] = {}
            for key, entry in best.items():
                final = self.resolve(key) if isinstance(key, str) else key
                if final not in merged or entry[:2] < merged[final][:2]:
                    merged[final] = entry
            best = merged
        ordered = sorted(best.values(), key=lambda entry: entry[:2])
        return ordered if self.budget is None else ordered[: self.budget]

    def lines(self) -> list[dict[str, Any]]:
        """The queue as line dicts, in queue order."""
        return [json.loads(text) for _, _, text in self._ordered()]

    def write(self, path: str | Path) -> int:
        """Write the queue as JSONL to `path` atomically; return the number of lines written."""
        ordered = self._ordered()
        with atomic_output(path) as fh:
            for _, _, text in ordered:
                fh.write(text + "\n")
        return len(ordered)


def review_queue(
    lines: Iterable[Mapping[str, Any]], budget: int | None = None, resolve: Callable[[str], str] | None = None,
    flagged_only: bool = False,
) -> list[dict[str, Any]]:
    """The review queue of `lines` (module docstring): errors out, one per group, least confident first."""
    queue = ReviewQueue(budget, resolve, flagged_only)
    for line in lines:
        queue.add(line)
    return queue.lines()


def write_review_queue(
    path: str | Path, lines: Iterable[Mapping[str, Any]], budget: int | None = None,
    resolve: Callable[[str], str] | None = None, flagged_only: bool = False,
) -> int:
    """Build the review queue of `lines` and write it to `path` atomically; return the number of lines."""
    queue = ReviewQueue(budget, resolve, flagged_only)
    for line in lines:
        queue.add(line)
    return queue.write(path)
