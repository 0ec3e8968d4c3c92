"""Reading the review queue: least confident first, group members, errors naming line and field; head labels."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from review_testkit import DAMAGE_ONLY, TWO_HEADS, make_queue

from crisis_tool.review.bundle_labels import labels_by_task
from crisis_tool.review.queue import load_queue
from crisis_tool.runtime.errors import DataError


def _line(id_: str, conf: float, **extra: object) -> dict:
    probs = {"little_or_no_damage": 1 - conf, "mild_damage": conf, "severe_damage": 0.0}
    return {"id": id_, "tasks": {"damage": {"label": "mild_damage", "confidence": conf, "probs": probs}},
            "group": id_, "duplicate_of": None, "error": None, "text": f"text {id_}", **extra}


def _write(path: Path, *objs: object) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")
    return path


def test_least_confident_first_over_heads_and_images_resolve_beside_the_queue(tmp_path: Path) -> None:
    queue = make_queue(tmp_path, TWO_HEADS, count=4)
    lines = queue.read_text().splitlines()
    _write(queue, *reversed(lines))  # the file's order must not matter
    items = load_queue(queue, TWO_HEADS)
    assert [it.id for it in items] == ["p0", "p1", "p2", "p3"]
    assert [it.index for it in items] == [0, 1, 2, 3]
    assert items[0].min_confidence == pytest.approx(0.35)
    assert list(items[0].heads) == ["informative", "damage"]
    assert items[1].image == tmp_path / "images" / "post1.jpg" and items[1].image.is_file()
    assert [m.id for m in items[0].members] == ["dup0a", "dup0b"]
    assert items[0].members[0].image == tmp_path / "images" / "post4.jpg" and items[0].members[1].image is None
    other = load_queue(queue, TWO_HEADS, image_root="/srv/crisis")
    assert other[1].image == Path("/srv/crisis/images/post1.jpg")


def test_queued_posts_of_one_group_are_members_of_each_other_and_errors_are_skipped(tmp_path: Path) -> None:
    queue = _write(tmp_path / "q.jsonl", _line("a", 0.5), _line("b", 0.4, group="a", duplicate_of="a"),
                   {"id": "bad", "tasks": {}, "error": "record bad: unreadable image"}, _line("c", 0.9))
    items = load_queue(queue, DAMAGE_ONLY)
    assert [it.id for it in items] == ["b", "a", "c"]
    assert [m.id for m in items[0].members] == ["a"] and [m.id for m in items[1].members] == ["b"]
    assert items[0].members[0].labels == {"damage": "mild_damage"}
    assert items[2].members == ()


def test_a_one_head_line_without_tasks_reads_as_the_bundles_head(tmp_path: Path) -> None:
    queue = _write(tmp_path / "q.jsonl", {"id": "x", "label": "severe_damage", "confidence": 0.6,
                                          "probs": {"severe_damage": 0.6}, "error": None})
    (item,) = load_queue(queue, DAMAGE_ONLY)
    assert item.heads["damage"].label == "severe_damage" and item.image is None


@pytest.mark.parametrize(("bad", "expected"), [
    ("not json", "line 2: not a JSON line"),
    (_line("a", 0.3), "line 2: field 'id' 'a' repeats line 1"),
    ({**_line("b", 0.3), "id": ""}, "line 2: field 'id' must be a non-empty string"),
    ({**_line("b", 0.3), "tasks": {"severity": {}}}, "line 2: field 'tasks.severity' is not a head of the bundle"),
    ({**_line("b", 0.3), "tasks": {"damage": {"label": "gone", "confidence": 0.3}}},
     "line 2: field 'tasks.damage.label' 'gone' is not a damage label"),
    ({**_line("b", 0.3), "tasks": {"damage": {"label": "mild_damage", "confidence": 1.5}}},
     "line 2: field 'tasks.damage.confidence' must be a number in [0, 1]"),
    ({**_line("b", 0.3), "image": 12}, "line 2: field 'image' must be a string or null"),
    ({**_line("b", 0.3), "group_members": [{"text": "no id"}]},
     "line 2 group_members[0]: field 'id' must be a non-empty string"),
])
def test_a_bad_queue_line_is_one_error_naming_line_and_field(tmp_path: Path, bad: object, expected: str) -> None:
    queue = _write(tmp_path / "q.jsonl", _line("a", 0.2), bad)
    with pytest.raises(DataError) as info:
        load_queue(queue, DAMAGE_ONLY)
    assert str(info.value).startswith(f"{queue} {expected}")


def test_labels_by_task_prefers_the_spec_heads_and_falls_back_to_the_manifest() -> None:
    heads = (SimpleNamespace(task="informative", labels=("no", "yes")), SimpleNamespace(task="damage", labels=["a"]))
    with_spec = SimpleNamespace(spec=SimpleNamespace(heads=heads), manifest=SimpleNamespace(task="x"), labels=["z"])
    assert labels_by_task(with_spec) == {"informative": ("no", "yes"), "damage": ("a",)}
    legacy = SimpleNamespace(manifest=SimpleNamespace(task="damage"), labels=["l", "m", "s"])
    assert labels_by_task(legacy) == {"damage": ("l", "m", "s")}


def test_labels_by_task_of_the_tiny_bundle(tiny_bundle: Path) -> None:
    from crisis_tool.runtime.bundle import Bundle

    assert labels_by_task(Bundle.load(tiny_bundle)) == DAMAGE_ONLY
