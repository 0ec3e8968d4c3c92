"""The CrisisMMD loader on the real settingA split files (skipped when absent) and on bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from crisis_tool.data.crisismmd import TASKS, load_split, read_split_tsv, resolve_task
from crisis_tool.runtime.errors import DataError, UsageError

EXPECTED_ROWS = {
    ("informative", "train"): 9599, ("informative", "dev"): 1573, ("informative", "test"): 1534,
    ("humanitarian", "train"): 2874, ("humanitarian", "dev"): 477, ("humanitarian", "test"): 451,
    ("damage", "train"): 2468, ("damage", "dev"): 529,
}


@pytest.mark.parametrize(("task", "split"), sorted(EXPECTED_ROWS))
def test_real_row_counts(real_splits: Path, task: str, split: str) -> None:
    rows = read_split_tsv(real_splits / f"task_{task}_text_img_{split}.tsv", TASKS[task])
    assert len(rows) == EXPECTED_ROWS[(task, split)]
    assert all(r.image.startswith("data_image/") and r.image_id for r in rows)


def test_real_label_sets(real_splits: Path) -> None:
    def counts(task: str, split: str) -> Counter:
        return Counter(r.label for r in read_split_tsv(real_splits / f"task_{task}_text_img_{split}.tsv", TASKS[task]))

    assert counts("informative", "train") == {"informative": 6343, "not_informative": 3256}
    assert counts("damage", "dev") == {"severe_damage": 332, "mild_damage": 126, "little_or_no_damage": 71}
    # affected_individuals 47 + injured_or_dead_people 22 + missing_or_found_people 2 are merged.
    assert counts("humanitarian", "train") == {
        "other_relevant_information": 1279, "rescue_volunteering_or_donation_effort": 912,
        "infrastructure_and_utility_damage": 595, "affected_individuals": 71, "vehicle_damage": 17,
    }
    assert counts("humanitarian", "test")["affected_individuals"] == 9
    assert "not_humanitarian" in TASKS["humanitarian"].classes  # the class list comes from the task, not the split


def test_real_unique_texts(real_splits: Path) -> None:
    """Retweets are common: the informative+humanitarian+damage rows hold far fewer unique texts."""
    texts = [r.text for p in sorted(real_splits.glob("*.tsv"))
             for r in read_split_tsv(p, TASKS[p.name.split("_")[1]])]
    assert len(texts) == 19505
    assert len(set(texts)) == 11725


def test_task_aliases_and_unknown_task() -> None:
    assert resolve_task("task2").name == "humanitarian"
    assert resolve_task("Damage").name == "damage"
    with pytest.raises(UsageError, match="unknown task 'flood'"):
        resolve_task("flood")


def test_bad_header_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "crisismmd_datasplit_settingA" / "task_damage_text_img_train.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("id\ttext\tlabel\n1\thello\tsevere_damage\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad header for task damage"):
        load_split(tmp_path, "damage", "train")


def test_unknown_label_and_short_row_name_line(tmp_path: Path) -> None:
    spec = TASKS["damage"]
    path = tmp_path / "t.tsv"
    path.write_text("\t".join(spec.columns) + "\ne\t1\t1_0\ttext\tdata_image/a.jpg\tsevere\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t.tsv:2: unknown label 'severe'"):
        read_split_tsv(path, spec)
    path.write_text("\t".join(spec.columns) + "\ne\t1\t1_0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t.tsv:2: expected 6 fields, got 3"):
        read_split_tsv(path, spec)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split file not found"):
        load_split(tmp_path, "informative", "train")
