"""`crisis-tool check-data` on the real CrisisMMD settingA split files (linked, never copied) with every image
present but one, and on broken layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from crisis_tool.cli import run

TASK = "humanitarian"


def _image_paths(tsv: Path) -> list[str]:
    with open(tsv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        column = next(reader).index("image")
        return [row[column] for row in reader if row]


@pytest.fixture()
def real_root(real_splits: Path, tmp_path: Path) -> tuple[Path, str]:
    """A CrisisMMD root: the real humanitarian TSVs as links, an empty file per image but one (the one returned)."""
    root = tmp_path / "CrisisMMD_v2.0"
    folder = root / "crisismmd_datasplit_settingA"
    folder.mkdir(parents=True)
    images: list[str] = []
    for split in ("train", "dev", "test"):
        name = f"task_{TASK}_text_img_{split}.tsv"
        (folder / name).symlink_to(real_splits / name)
        images += _image_paths(real_splits / name)
    missing = images[len(images) // 2]
    for image in set(images) - {missing}:
        path = root / image
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return root, missing


def test_reports_exactly_the_missing_image(real_root: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    root, missing = real_root
    assert run(["check-data", str(root), "--task", TASK]) == 1
    captured = capsys.readouterr()
    problems = [line for line in captured.out.splitlines() if not line.startswith(f"{TASK} ")]
    assert len(problems) == 1, problems
    assert f": image missing: {root / missing} (field 'image', tweet " in problems[0]
    assert ".tsv:" in problems[0]  # names the split file and its line
    assert captured.err.strip() == f"error: 1 problem(s) in {root} (listed above)"
    # label counts per split, with the task's merged classes
    counts = [line for line in captured.out.splitlines() if line.startswith(f"{TASK} ")]
    assert [c.split(":")[0] for c in counts] == [f"{TASK} train", f"{TASK} dev", f"{TASK} test"]
    assert counts[0].startswith(f"{TASK} train: 2874 rows: other_relevant_information 1279, ")
    assert "affected_individuals 9" in counts[2]  # 7 affected + 2 injured_or_dead_people, merged


def test_all_present_is_ok(real_root: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    root, missing = real_root
    (root / missing).touch()
    assert run(["check-data", str(root), "--task", TASK]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("ok: 3802 rows, every image present. next: crisis-tool train --data ")


def test_broken_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    (root / "CrisisMMD_v2.0").mkdir(parents=True)
    assert run(["check-data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "crisismmd_datasplit_settingA: folder missing" in out and f"did you mean {root / 'CrisisMMD_v2.0'}" in out
    folder = root / "crisismmd_datasplit_settingA"
    folder.mkdir()
    (folder / "task_damage_text_img_train.tsv").write_text(
        "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\n"
        "quake\t1\t1_0\tbridge down\tdata_image/quake/1_0.jpg\tsevere_damage\n"
        "quake\t2\t2_0\tshort row\n"
        "quake\t3\t3_0\tall fine\tdata_image/quake/3_0.jpg\ttotal_damage\n")
    assert run(["check-data", str(root), "--task", "damage"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "damage train: 1 rows: severe_damage 1"
    problems = lines[1:]
    assert f"{root / 'data_image'}: folder missing (the images of the CrisisMMD v2.0 archive)" in problems
    assert any(p.endswith("task_damage_text_img_train.tsv:2: image missing: "
                          f"{root / 'data_image/quake/1_0.jpg'} (field 'image', tweet 1)") for p in problems)
    assert any(p.endswith("_train.tsv:3: expected 6 fields, got 4") for p in problems)
    assert any(p.endswith("_train.tsv:4: unknown label 'total_damage' for task damage (field 'label')")
               for p in problems)
    assert any(p.endswith("task_damage_text_img_dev.tsv: split file missing (task damage, split dev)")
               for p in problems)
    assert len(problems) == 7  # + the missing image of line 4 and the missing test split


def test_problems_capped_per_file_unless_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path
    folder = root / "crisismmd_datasplit_settingA"
    folder.mkdir()
    (root / "data_image").mkdir()
    rows = "".join(f"e\t{i}\t{i}_0\ttext\tdata_image/{i}_0.jpg\tmild_damage\n" for i in range(30))
    for split in ("train", "dev", "test"):
        (folder / f"task_damage_text_img_{split}.tsv").write_text(
            "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\n" + rows)
    assert run(["check-data", str(root), "--task", "damage"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sum("image missing" in line for line in out) == 3 * 20
    assert sum(line.endswith("10 more problem(s) (--all lists them)") for line in out) == 3
    assert run(["check-data", str(root), "--task", "damage", "--all"]) == 1
    assert sum("image missing" in line for line in capsys.readouterr().out.splitlines()) == 90
