"""`label` groups near-duplicates across every file of one run (its second pass), and writes the run's review queue.

The unit tests drive `label_groups.group_run` over partials as the actors write them; the Ray test labels two files
whose posts repeat across files (a re-encoded, resized photo; a retweet) and reads the groups back.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serve_helpers import RAY_MISSING

from crisis_tool.runtime.serve.label_groups import TRIAGE_KEY, RunFile, group_run, triage_keys
from crisis_tool.runtime.serve.label_output import partial_paths
from crisis_tool.runtime.triage.queue_writer import ReviewQueueWriter


def _answer(rid: str, confidence: float, image_hash: int | None, text: str | None, error: str | None = None,
            post: bool = False) -> str:
    line: dict[str, Any] = {"id": rid, "tasks": {} if error else {"damage": {"label": "a", "confidence": confidence}},
                            "needs_review": False, "group": None if error else "stale", "duplicate_of": None,
                            "error": error}
    if error is None:
        line[TRIAGE_KEY] = triage_keys(image_hash, text, post, f"{rid}.jpg")
    return json.dumps(line)


def _partials(tmp_path: Path, files: dict[str, list[str]], output_format: str = "jsonl") -> list[RunFile]:
    run = []
    for name, lines in files.items():
        out = tmp_path / f"{name}.predictions.{output_format}"
        part, note = partial_paths(out)
        part.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        note.write_text("{}\n")
        run.append(RunFile(out, output_format))
    return run


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


PHOTO = 0x0F0F_3C3C_A5A5_5A5A


def test_groups_span_the_files_of_a_run(tmp_path: Path) -> None:
    run = _partials(tmp_path, {
        "a": [_answer("a1", 0.9, PHOTO, "Shelter open at Houston https://t.co/x"),
              _answer("a2", 0.8, 0x1234_5678_9ABC_DEF0, "bridge collapsed")],
        "b": [_answer("b1", 0.7, PHOTO ^ 0b1011, "a different caption"),  # the photo again, 3 bits off
              _answer("b2", 0.6, None, "RT @FEMA: shelter open at #Houston"),  # a retweet of a1, no image
              _answer("b3", 0.5, None, None, error="record b3: bad image"),
              _answer("b4", 0.4, ~0x1234_5678_9ABC_DEF0 & (2**64 - 1), "nothing alike")],
    })
    assert group_run(run) == [f.out for f in run]
    a, b = _lines(run[0].out), _lines(run[1].out)
    assert [(x["id"], x["group"], x["duplicate_of"]) for x in a + b] == [
        ("a1", "a1", None), ("a2", "a2", None),
        ("b1", "a1", "a1"), ("b2", "a1", "a1"), ("b3", None, None), ("b4", "b4", None)]
    assert all(TRIAGE_KEY not in x for x in a + b)  # the private keys never reach an output
    assert not [p for f in run for p in partial_paths(f.out) if p.exists()]  # partials and notes are gone
    assert not list(tmp_path.glob(".*.partial"))


def test_without_groups_lines_keep_no_group(tmp_path: Path) -> None:
    run = _partials(tmp_path, {"a": [_answer("a1", 0.9, PHOTO, "x")], "b": [_answer("b1", 0.9, PHOTO, "x")]})
    group_run(run, groups=False)
    assert [x["group"] for f in run for x in _lines(f.out)] == ["stale", "stale"]  # what the actor wrote


def test_parquet_outputs_carry_group_and_duplicate_of(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    run = _partials(tmp_path, {"a": [_answer("a1", 0.9, PHOTO, "x")], "b": [_answer("b1", 0.9, PHOTO, "y")]},
                    "parquet")
    group_run(run)
    rows = [r for f in run for r in pq.read_table(f.out).to_pylist()]
    assert [(r["id"], r["group"], r["duplicate_of"]) for r in rows] == [("a1", "a1", None), ("b1", "a1", "a1")]


def test_the_review_queue_holds_one_post_per_group_across_files(tmp_path: Path) -> None:
    run = _partials(tmp_path, {
        "a": [_answer("a1", 0.9, PHOTO, "same", post=True), _answer("a2", 0.3, None, "alone", post=True)],
        "b": [_answer("b1", 0.5, PHOTO, "other", post=True), _answer("b2", 0.2, None, None, error="bad")],
    })
    queue = ReviewQueueWriter(tmp_path / "queue.jsonl")
    group_run(run, review_queue=queue)
    assert queue.write() == 2
    queued = _lines(tmp_path / "queue.jsonl")
    assert [q["id"] for q in queued] == ["a2", "b1"]  # least confident first; b1 stands for its group with a1
    assert queued[1]["group"] == "a1" and [m["id"] for m in queued[1]["group_members"]] == ["a1"]
    assert queued[1]["image"] == "b1.jpg" and queued[1]["text"] == "other"  # what the review page shows


def test_the_review_queue_folds_groups_merged_late(tmp_path: Path) -> None:
    run = _partials(tmp_path, {
        "a": [_answer("a1", 0.3, PHOTO, "first words", post=True), _answer("a2", 0.2, None, "second", post=True)],
        "b": [_answer("b1", 0.9, PHOTO, "second", post=True)],  # joins a1 (photo) and a2 (text): one group
    })
    queue = ReviewQueueWriter(tmp_path / "queue.jsonl")
    group_run(run, review_queue=queue)
    assert [x["group"] for f in run for x in _lines(f.out)] == ["a1", "a2", "a1"]  # lines keep the id they got
    assert queue.write() == 1
    (only,) = _lines(tmp_path / "queue.jsonl")
    assert only["id"] == "a2" and only["group"] == "a1" and only["group_size"] == 3
    assert sorted(m["id"] for m in only["group_members"]) == ["a1", "b1"]


# ---------------------------------------------------------------------------------------------------- with Ray
def _photo() -> Image.Image:
    """A smooth, structured picture (pHash is stable under re-encoding and resizing for it)."""
    y, x = np.mgrid[0:240, 0:320]
    pattern = np.stack([(x * 0.8) % 256, (y * 1.1) % 256, ((x + y) * 0.4 + 60 * np.sin(x / 23.0)) % 256], -1)
    return Image.fromarray(pattern.astype(np.uint8))


def _other_photo() -> Image.Image:
    y, x = np.mgrid[0:200, 0:200]
    return Image.fromarray(np.stack([255 * ((x // 25 + y // 25) % 2)] * 3, -1).astype(np.uint8))


def test_label_groups_reposts_across_files(local_ray: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason=RAY_MISSING)
    from crisis_tool.cli import run as cli_run

    _photo().save(tmp_path / "flood.png")
    copy = io.BytesIO()
    _photo().resize((256, 192)).save(copy, format="JPEG", quality=60)
    (tmp_path / "flood_repost.jpg").write_bytes(copy.getvalue())
    _other_photo().save(tmp_path / "other.png")
    (tmp_path / "day1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "d1a", "text": "Water rising on Main St", "image": "flood.png"},
        {"id": "d1b", "text": "Road closed near the bridge", "image": "other.png"}]))
    (tmp_path / "day2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "d2a", "text": "look at this", "image": "flood_repost.jpg"},
        {"id": "d2b", "text": "RT @news: road closed near the bridge https://t.co/abc", "image": "flood_repost.jpg"},
        {"id": "d2c", "text": "Volunteers needed", "image": "other.png"}]))
    out, queue = tmp_path / "out", tmp_path / "queue.jsonl"
    code = cli_run(["label", "--bundle", str(tiny_bundle), "--input", str(tmp_path / "day1.jsonl"),
                    "--input", str(tmp_path / "day2.jsonl"), "--output", str(out), "--image-root", str(tmp_path),
                    "--batch-size", "2", "--threads", "1", "--review-queue", str(queue)])
    assert code == 0
    lines = _lines(out / "day1.predictions.jsonl") + _lines(out / "day2.predictions.jsonl")
    groups = {x["id"]: (x["group"], x["duplicate_of"]) for x in lines}
    # the repost joins d1a by its photo and d1b by its retweeted text: one group, the oldest id
    assert groups["d2a"] == ("d1a", "d1a")
    assert groups["d2b"][0] == "d1a" and groups["d2b"][1] in {"d1a", "d1b"}
    assert groups["d2c"] == ("d1a", "d1b")  # other.png again: it copies d1b, whose group d2b merged into d1a
    assert all(TRIAGE_KEY not in x for x in lines) and len(lines) == 5
    queued = _lines(queue)
    assert queued and all(q["image"] and q["text"] for q in queued)
    assert len({q["group"] for q in queued}) == len(queued)
