"""The review queue (crisis_tool.runtime.triage.review_queue): least confident first, one per group, no errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.triage.grouping import NearDuplicateGrouper
from crisis_tool.runtime.triage.review_queue import ReviewQueue, queue_score, review_queue, write_review_queue


def line(rid: str, confidences: dict[str, float], group: str | None = None, error: str | None = None,
         needs_review: bool = False) -> dict[str, Any]:
    """An output line as the contract writes it (labels are irrelevant to the queue)."""
    tasks = {} if error else {task: {"label": "x", "confidence": c, "probs": {"x": c}, "needs_review": needs_review}
                              for task, c in confidences.items()}
    return {"id": rid, "tasks": tasks, "needs_review": needs_review and not error, "group": group or rid,
            "duplicate_of": None if group in (None, rid) else group, "error": error}


LINES = [
    line("p1", {"informative": 0.9, "damage": 0.6}),             # score 0.6
    line("p2", {"informative": 0.95, "damage": 0.5}, "p1"),      # score 0.5: p1's group, less confident
    line("p3", {"informative": 0.4, "damage": 0.99}),            # score 0.4
    line("p4", {}, error="record p4: image file a.jpg is empty (0 bytes)"),
    line("p5", {"informative": 0.7, "damage": 0.8}),             # score 0.7
    line("p6", {"informative": 0.45, "damage": 0.9}, "p1"),      # score 0.45: now p1's least confident
    line("p7", {"informative": 0.7, "damage": 0.99}),            # score 0.7, tie with p5: after it
]


def test_order_groups_and_errors() -> None:
    queue = review_queue(LINES)
    assert [q["id"] for q in queue] == ["p3", "p6", "p5", "p7"]
    assert queue[1] == LINES[5]  # the same line, unchanged


def test_scores() -> None:
    assert queue_score(LINES[1]) == 0.5
    assert queue_score(LINES[3]) is None
    assert queue_score({**LINES[0], "error": "record p1: text is not a string"}) is None  # error wins over tasks
    one_head = {"id": "a", "label": "x", "confidence": 0.3, "error": None}
    assert queue_score(one_head) == 0.3
    assert queue_score({"id": "b", "tasks": {}, "error": None}) is None


def test_budget_and_flagged_only() -> None:
    assert [q["id"] for q in review_queue(LINES, budget=2)] == ["p3", "p6"]
    assert review_queue(LINES, budget=0) == []
    flagged = [line("a", {"t": 0.2}), line("b", {"t": 0.3}, needs_review=True), line("c", {"t": 0.9})]
    assert [q["id"] for q in review_queue(flagged, flagged_only=True)] == ["b"]
    with pytest.raises(UsageError, match="budget"):
        ReviewQueue(budget=-1)


def test_resolve_joins_groups_merged_after_their_lines_were_written() -> None:
    grouper = NearDuplicateGrouper()
    lines = []
    for rid, image, text, conf in [("p1", 1, None, 0.3), ("p2", None, "shelter", 0.2), ("p3", 1, "shelter", 0.9)]:
        group, duplicate_of = grouper.add(rid, image, text)
        lines.append({**line(rid, {"t": conf}), "group": group, "duplicate_of": duplicate_of})
    assert [q["id"] for q in review_queue(lines)] == ["p2", "p1"]  # as written: p2 still says group p2
    assert [q["id"] for q in review_queue(lines, resolve=grouper.resolve)] == ["p2"]


def test_written_atomically_as_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "queue.jsonl"
    out.write_text("old\n", encoding="utf-8")
    assert write_review_queue(out, LINES) == 4
    written = [json.loads(text) for text in out.read_text(encoding="utf-8").splitlines()]
    assert written == review_queue(LINES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["queue.jsonl"]  # no temporary left behind


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "queue.jsonl"
    out.write_text("old\n", encoding="utf-8")

    def broken_lines():
        yield LINES[0]
        raise RuntimeError("input failed halfway")

    queue = ReviewQueue()
    with pytest.raises(RuntimeError):
        write_review_queue(out, broken_lines())
    assert out.read_text(encoding="utf-8") == "old\n"
    with pytest.raises(UsageError, match="not a regular file"):
        queue.write(tmp_path)
