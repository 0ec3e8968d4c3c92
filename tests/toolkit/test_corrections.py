"""corrections.jsonl: one-line errors naming line and field, the last decision wins, merge over split labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crisis_tool.corrections import (
    Correction,
    latest_decisions,
    merge_corrections,
    parse_corrections_text,
    read_corrections,
    read_corrections_files,
)
from crisis_tool.runtime.errors import DataError

LABELS = {"damage": ("little_or_no_damage", "mild_damage", "severe_damage"),
          "informative": ("not_informative", "informative")}


def line(id_: str = "p1", task: str = "damage", label: str = "mild_damage", previous: str | None = "severe_damage",
         action: str = "correct", **extra: object) -> dict:
    return {"id": id_, "task": task, "label": label, "previous": previous, "time": "2026-12-06T05:30:00Z",
            "action": action, "reviewer": None, **extra}


def write(path: Path, *objs: object) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")
    return path


def test_reads_lines_in_order_and_round_trips(tmp_path: Path) -> None:
    objs = [line(), line("p2", "informative", "informative", "not_informative", reviewer="ana"),
            line("p3", label="severe_damage", action="accept", via="p1")]
    items = read_corrections(write(tmp_path / "c.jsonl", objs[0], "", *objs[1:]))
    assert [c.to_dict() for c in items] == objs
    assert [c.line for c in items] == [1, 3, 4]
    assert items[1].reviewer == "ana" and items[2].via == "p1"


@pytest.mark.parametrize(("bad", "expected"), [
    ('{"id": "p1"', "line 2: not a JSON line"),
    ("[1, 2]", "line 2: expected a JSON object"),
    (json.dumps({k: v for k, v in line().items() if k != "task"}), "line 2: field 'task' is missing"),
    (json.dumps(line(label="")), "line 2: field 'label' must be a non-empty string"),
    (json.dumps(line(id_=7)), "line 2: field 'id' must be a non-empty string"),  # type: ignore[arg-type]
    (json.dumps(line(action="maybe")), "line 2: field 'action' must be one of correct, accept"),
    (json.dumps({**line(), "time": "yesterday"}), "line 2: field 'time' is not an ISO 8601 time"),
    (json.dumps({**line(), "score": 1}), "line 2: field 'score' is not a corrections field"),
    (json.dumps(line(previous=3)), "line 2: field 'previous' must be a non-empty string or null"),  # type: ignore
])
def test_a_bad_line_is_one_error_naming_file_line_and_field(tmp_path: Path, bad: str, expected: str) -> None:
    path = write(tmp_path / "c.jsonl", line(), bad, line("p9"))
    with pytest.raises(DataError) as info:
        read_corrections(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path} {expected}")


def test_an_unfinished_last_write_is_skipped_with_a_warning() -> None:
    data = (json.dumps(line()) + "\n" + '{"id": "p2", "ta').encode()
    with pytest.warns(UserWarning, match="line 2: unfinished last write skipped"):
        items = parse_corrections_text(data, "c.jsonl")
    assert [c.id for c in items] == ["p1"]
    with pytest.raises(DataError, match="line 1: not a JSON line"):  # the same bytes in the middle are an error
        parse_corrections_text(b'{"id": "p2", "ta\n' + json.dumps(line()).encode() + b"\n", "c.jsonl")


def test_missing_file_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read corrections file .*nope.jsonl"):
        read_corrections(tmp_path / "nope.jsonl")


def test_the_last_decision_per_id_and_task_wins() -> None:
    items = [Correction(**line(label="mild_damage")), Correction(**line("p1", "informative", "informative")),
             Correction(**line(label="little_or_no_damage"))]
    latest = latest_decisions(items)
    assert latest[("p1", "damage")].label == "little_or_no_damage"
    assert latest[("p1", "informative")].label == "informative"
    assert len(latest) == 2


def test_merge_human_label_wins_and_counts_used_and_changed() -> None:
    split = {("a", "damage"): "severe_damage", ("b", "damage"): "mild_damage", ("c", "damage"): "mild_damage",
             ("a", "informative"): "informative"}
    items = [Correction(**line("a", label="mild_damage")),           # changes a/damage
             Correction(**line("b", label="mild_damage", action="accept")),  # used, same label
             Correction(**line("c", label="severe_damage")),         # later overridden by the next line
             Correction(**line("c", label="mild_damage")),           # last wins: back to the split label
             Correction(**line("zz", label="mild_damage"))]           # not in the split
    result = merge_corrections(split, items, LABELS)
    assert result.merged == {("a", "damage"): "mild_damage", ("b", "damage"): "mild_damage",
                             ("c", "damage"): "mild_damage", ("a", "informative"): "informative"}
    assert (result.used, result.changed, result.unmatched) == (3, 1, (("zz", "damage"),))
    assert result.summary() == "3 used, 1 changed, 1 not in the split (ignored)"
    assert split[("a", "damage")] == "severe_damage"  # the input mapping is left alone


def test_merge_refuses_unknown_task_or_label_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", line(), line("p2", label="destroyed"))
    with pytest.raises(DataError, match=r"c.jsonl line 2: field 'label' 'destroyed' is not a damage label"):
        merge_corrections({}, read_corrections(path), LABELS)
    path = write(tmp_path / "d.jsonl", line(task="severity"))
    with pytest.raises(DataError, match=r"d.jsonl line 1: field 'task' 'severity' is not one of damage, informative"):
        merge_corrections({}, read_corrections(path), LABELS)


def test_several_files_later_file_wins(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", line("p1", label="mild_damage"), line("p2", label="mild_damage"))
    second = write(tmp_path / "b.jsonl", line("p1", label="little_or_no_damage"))
    split = {("p1", "damage"): "severe_damage", ("p2", "damage"): "severe_damage"}
    result = merge_corrections(split, read_corrections_files([first, second]))
    assert result.merged[("p1", "damage")] == "little_or_no_damage"
    assert (result.used, result.changed) == (2, 2)
    result = merge_corrections(split, read_corrections_files([second, first]))
    assert result.merged[("p1", "damage")] == "mild_damage"
