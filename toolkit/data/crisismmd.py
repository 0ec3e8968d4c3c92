"""CrisisMMD v2.0 split files: task definitions and a strict TSV reader.

A data root is a `CrisisMMD_v2.0/` folder: split TSVs under `crisismmd_datasplit_<splits>/`
(`settingA`, `all` or `agreed_label`) and images under `data_image/...` as each row's `image` column says.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from crisis_tool.runtime.errors import DataError, UsageError

INFO_COLUMNS = (
    "event_name", "tweet_id", "image_id", "tweet_text", "image",
    "label", "label_text", "label_image", "label_text_image",
)
DAMAGE_COLUMNS = ("event_name", "tweet_id", "image_id", "tweet_text", "image", "label")
SPLITS = ("train", "dev", "test")
SPLIT_SETS = ("settingA", "all", "agreed_label")


@dataclass(frozen=True)
class TaskSpec:
    """A classification task: its file stem, class list (output order) and raw-label merges."""

    name: str
    classes: tuple[str, ...]
    columns: tuple[str, ...]
    merges: tuple[tuple[str, str], ...] = ()

    def class_of(self, raw_label: str) -> str | None:
        """Map a raw TSV label to its (possibly merged) class, or None when unknown."""
        label = dict(self.merges).get(raw_label, raw_label)
        return label if label in self.classes else None


TASKS: dict[str, TaskSpec] = {
    "informative": TaskSpec("informative", ("not_informative", "informative"), INFO_COLUMNS),
    # The paper's code merges three small people-related classes into `affected_individuals`.
    "humanitarian": TaskSpec(
        "humanitarian",
        (
            "infrastructure_and_utility_damage",
            "not_humanitarian",
            "other_relevant_information",
            "rescue_volunteering_or_donation_effort",
            "vehicle_damage",
            "affected_individuals",
        ),
        INFO_COLUMNS,
        merges=(
            ("injured_or_dead_people", "affected_individuals"),
            ("missing_or_found_people", "affected_individuals"),
        ),
    ),
    "damage": TaskSpec("damage", ("little_or_no_damage", "mild_damage", "severe_damage"), DAMAGE_COLUMNS),
}
TASK_ALIASES = {"task1": "informative", "task2": "humanitarian", "task3": "damage"}


def resolve_tasks(names: str) -> list[TaskSpec]:
    """Tasks from `--task`: one name, a comma-separated list, or "all" (the three CrisisMMD tasks)."""
    parts = [n.strip() for n in names.split(",") if n.strip()]
    if parts == ["all"]:
        return list(TASKS.values())
    if not parts:
        raise UsageError("--task needs a task name (informative, humanitarian, damage), a list or 'all'")
    tasks = [resolve_task(n) for n in parts]
    return list({t.name: t for t in tasks}.values())


def resolve_task(name: str) -> TaskSpec:
    """A task by name or alias (task1/task2/task3)."""
    key = TASK_ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise UsageError(f"unknown task {name!r} (choose from informative, humanitarian, damage or task1..task3)")
    return TASKS[key]


@dataclass(frozen=True)
class Example:
    """One labelled tweet-image pair."""

    tweet_id: str
    image_id: str
    text: str
    image: str
    label: str
    event: str
    llava_text: str | None = None


def split_path(root: Path, task: TaskSpec, split: str, splits: str = "settingA") -> Path:
    """Where a split TSV lives under a CrisisMMD root."""
    if splits not in SPLIT_SETS:
        raise UsageError(f"unknown --splits {splits!r} (choose from {', '.join(SPLIT_SETS)})")
    return Path(root) / f"crisismmd_datasplit_{splits}" / f"task_{task.name}_text_img_{split}.tsv"


def read_split_tsv(path: Path, task: TaskSpec) -> list[Example]:
    """Read one split TSV (quoting disabled: tweets contain stray double quotes).

    Raises DataError naming the file, line and field for a bad header, a short row or an unknown label.
    A trailing `LLaVA_text` column (the authors' enriched TSVs) is read when present.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(header[: len(task.columns)]) != task.columns:
            raise DataError(
                f"{path}: bad header for task {task.name}: expected {len(task.columns)} columns "
                f"{' '.join(task.columns)}, got {' '.join(header or ['(empty file)'])}"
            )
        llava_col = header.index("LLaVA_text") if "LLaVA_text" in header else None
        examples = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < len(task.columns):
                raise DataError(f"{path}:{line_no}: expected {len(task.columns)} fields, got {len(row)}")
            fields = dict(zip(task.columns, row))
            label = task.class_of(fields["label"])
            if label is None:
                raise DataError(
                    f"{path}:{line_no}: unknown label {fields['label']!r} for task {task.name} (field 'label')"
                )
            llava = row[llava_col] if llava_col is not None and llava_col < len(row) else None
            examples.append(
                Example(
                    tweet_id=fields["tweet_id"],
                    image_id=fields["image_id"],
                    text=fields["tweet_text"],
                    image=fields["image"],
                    label=label,
                    event=fields["event_name"],
                    llava_text=llava or None,
                )
            )
    return examples


def load_split(root: Path, task: str | TaskSpec, split: str, splits: str = "settingA") -> list[Example]:
    """Read a split of a task from a CrisisMMD root."""
    spec = resolve_task(task) if isinstance(task, str) else task
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return read_split_tsv(split_path(root, spec, split, splits), spec)


def available_splits(root: Path, task: TaskSpec, splits: str = "settingA") -> list[str]:
    """The splits of a task that exist under a root."""
    return [s for s in SPLITS if split_path(root, task, s, splits).is_file()]
