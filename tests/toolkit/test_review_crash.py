"""`crisis-tool review` as a real process: SIGKILL between decisions loses none, and the reopened page resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from review_testkit import DAMAGE_ONLY, ReviewProcess, get_json, make_queue, post_json, read_lines

pytest.importorskip("uvicorn")

DECISIONS = [(0, "severe_damage"), (1, "little_or_no_damage"), (2, "mild_damage"), (3, "severe_damage")]


def test_sigkill_between_decisions_loses_none(tiny_bundle: Path, tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "q", DAMAGE_ONLY, count=5)
    corrections = tmp_path / "corrections.jsonl"
    args = ["--queue", queue, "--bundle", tiny_bundle, "--labels", corrections]
    answered: list[tuple[str, str]] = []
    for step, (index, label) in enumerate(DECISIONS):
        server = ReviewProcess([str(a) for a in args])
        try:
            state = get_json(f"{server.url}/api/state")
            assert state["progress"]["position"] == step  # resumes after the last acknowledged decision
            assert state["progress"]["reviewed"] == step
            res = post_json(f"{server.url}/api/decision", {"index": index, "task": "damage", "label": label})
            answered.append((res["item"]["id"], label))
        finally:
            server.kill()  # SIGKILL right after the answer: no shutdown code, no buffered writes flushed
        assert server.proc.returncode == -9
        assert [(x["id"], x["label"]) for x in read_lines(corrections)] == answered
    assert [x["id"] for x in read_lines(corrections)] == ["p0", "p1", "p2", "p3"]


def test_sigkill_after_a_burst_of_decisions(tiny_bundle: Path, tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "q", DAMAGE_ONLY, count=5)
    corrections = tmp_path / "c.jsonl"
    server = ReviewProcess([str(a) for a in ("--queue", queue, "--bundle", tiny_bundle, "--labels", corrections)])
    try:
        for index, label in DECISIONS:
            post_json(f"{server.url}/api/decision", {"index": index, "task": "damage", "label": label})
    finally:
        server.kill()
    assert [(x["id"], x["label"]) for x in read_lines(corrections)] == [
        (f"p{i}", label) for i, label in DECISIONS]
