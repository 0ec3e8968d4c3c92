"""Check a CrisisMMD root without stopping at the first problem: layout, split files, labels, image files.

`read_split_tsv` stops at the first bad row (right for training); this reads every row of every split and
collects each problem as one line naming the file, the line and the field, plus label counts per split.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from crisis_tool.data.crisismmd import SPLITS, TaskSpec, split_path


@dataclass
class Problem:
    file: str  # the split file (or folder) the problem is in
    text: str  # one line


@dataclass
class DataReport:
    """Label counts per (task, split) and every problem found."""

    counts: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def count_lines(self) -> list[str]:
        """`damage train: 2468 rows: severe_damage 1548, mild_damage 587, ...` per split read."""
        return [f"{task} {split}: {sum(c.values())} rows: " + ", ".join(f"{k} {v}" for k, v in c.most_common())
                for (task, split), c in self.counts.items()]

    def problem_lines(self, per_file: int | None = None) -> list[str]:
        """One line per problem; with `per_file`, at most that many per file and then how many more."""
        lines: list[str] = []
        by_file: Counter[str] = Counter()
        for problem in self.problems:
            by_file[problem.file] += 1
            if per_file is None or by_file[problem.file] <= per_file:
                lines.append(problem.text)
        lines += [f"{name}: {n - per_file} more problem(s) (--all lists them)" for name, n in by_file.items()
                  if per_file is not None and n > per_file]
        return lines


def _check_split(root: Path, path: Path, task: TaskSpec, report: DataReport, counts: Counter[str]) -> None:
    csv.field_size_limit(sys.maxsize)
    name = str(path)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(header[: len(task.columns)]) != task.columns:
            report.problems.append(Problem(name, f"{path}:1: bad header for task {task.name}: expected "
                                           f"{' '.join(task.columns)}, got {' '.join(header or ['(empty file)'])}"))
            return
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < len(task.columns):
                report.problems.append(Problem(name, f"{path}:{line_no}: expected {len(task.columns)} fields, "
                                               f"got {len(row)}"))
                continue
            fields = dict(zip(task.columns, row))
            label = task.class_of(fields["label"])
            if label is None:
                report.problems.append(Problem(name, f"{path}:{line_no}: unknown label {fields['label']!r} for "
                                               f"task {task.name} (field 'label')"))
            else:
                counts[label] += 1
            image = fields["image"].strip()
            if not image:
                report.problems.append(Problem(name, f"{path}:{line_no}: empty field 'image'"))
            elif not (root / image).is_file():
                report.problems.append(Problem(name, f"{path}:{line_no}: image missing: {root / image} "
                                               f"(field 'image', tweet {fields['tweet_id']})"))


def check_root(root: Path, tasks: list[TaskSpec], splits: str = "settingA") -> DataReport:
    """Every problem of `tasks`' split files under `root`, and their label counts."""
    report = DataReport()
    folder = root / f"crisismmd_datasplit_{splits}"
    if not folder.is_dir():
        nested = root / "CrisisMMD_v2.0"
        hint = f" (did you mean {nested}?)" if nested.is_dir() else ""
        report.problems.append(Problem(str(folder), f"{folder}: folder missing; a CrisisMMD v2.0 root holds "
                                       f"crisismmd_datasplit_{splits}/ and data_image/{hint}"))
        return report
    if not (root / "data_image").is_dir():
        report.problems.append(Problem(str(root), f"{root / 'data_image'}: folder missing (the images of the "
                                       "CrisisMMD v2.0 archive)"))
    for task in tasks:
        for split in SPLITS:
            path = split_path(root, task, split, splits)
            if not path.is_file():
                report.problems.append(Problem(str(path), f"{path}: split file missing (task {task.name}, "
                                               f"split {split})"))
                continue
            counts: Counter[str] = Counter()
            report.counts[task.name, split] = counts
            _check_split(root, path, task, report, counts)
    return report
