"""A labelled record set for bench's task metrics: the runtime's record readers plus each record's `label`.

Sources: a JSONL file whose objects carry a `label` field, or a TSV with a `label` column (the CrisisMMD split
layout; the CLI turns `--data ROOT --task T --split S` into such a TSV and the task's label merges). Records,
ids, images and texts come from `crisis_tool.runtime.records` unchanged; this module only adds the labels,
matched by line number, so the bench sees exactly what `predict` would read.

A source without any label is not labelled (None: timing only). In a labelled source every readable record
must carry a label that is one of the bundle's labels (after `label_map`), else DataError naming the record,
its line and the field. Lines the readers cannot read (`RecordError`) are kept: they count as failed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crisis_tool.runtime.errors import DataError
from crisis_tool.runtime.image_decode import ImageLimits, load_image
from crisis_tool.runtime.line_reader import LineTooLong, bounded_lines
from crisis_tool.runtime.records import JSONL_SUFFIXES, Record, RecordError, read_records

LABEL_FIELD = "label"


@dataclass(frozen=True)
class LabelledSet:
    """Every input item of a labelled source, in order, and the label of each readable record."""

    items: list[Record | RecordError]
    labels: dict[int, str]  # index in `items` -> class name (only for Records)
    classes: tuple[str, ...]
    source: str
    task: str | None = None  # the head the labels are for (None: the bundle's first)

    @property
    def records(self) -> list[Record]:
        return [item for item in self.items if isinstance(item, Record)]

    def __len__(self) -> int:
        return len(self.items)


def _tsv_labels(path: Path) -> dict[int, str | None] | None:
    """Line number -> `label` column value (None when the line lacks it); None when there is no such column."""
    with open(path, "rb") as fh:
        lines = bounded_lines(fh)
        first = next(lines, b"")
        if isinstance(first, LineTooLong):
            return None
        header = first.decode("utf-8-sig", errors="replace").rstrip("\r\n").split("\t")
        if LABEL_FIELD not in header:
            return None
        col = header.index(LABEL_FIELD)
        out: dict[int, str | None] = {}
        for line_no, raw in enumerate(lines, start=2):
            if isinstance(raw, LineTooLong):
                out[line_no] = None
                continue
            fields = raw.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
            out[line_no] = fields[col] if len(fields) > col else None
    return out


def _jsonl_labels(path: Path) -> dict[int, str | None] | None:
    """Line number -> the object's `label` (None when absent or not a string); None when no line has one."""
    out: dict[int, str | None] = {}
    found = False
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(bounded_lines(fh), start=1):
            if isinstance(raw, LineTooLong):
                continue
            try:
                obj = json.loads(raw.decode("utf-8-sig"))
            except ValueError:
                continue
            value = obj.get(LABEL_FIELD) if isinstance(obj, dict) else None
            found = found or value is not None
            out[line_no] = value if isinstance(value, str) else None
    return out if found else None


def read_labelled(source: str | Path, image_root: str | Path | None, classes: Sequence[str],
                  label_map: Mapping[str, str] | None = None) -> LabelledSet | None:
    """The labelled set of a JSONL/TSV file, or None when it has no `label` field at all.

    `label_map` maps raw labels to classes (e.g. a task's merged classes); every label must then be one of
    `classes` (the bundle's labels). A TSV without `image_root` resolves images against its folder.
    """
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        raw_labels = _tsv_labels(path) if path.is_file() else None
        image_root = image_root if image_root is not None else path.resolve().parent
    elif suffix in JSONL_SUFFIXES:
        raw_labels = _jsonl_labels(path) if path.is_file() else None
    else:
        return None
    if raw_labels is None:
        return None
    items = list(read_records(path, image_root))
    mapping = dict(label_map or {})
    labels: dict[int, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Record):
            continue
        raw = raw_labels.get(item.line_no)
        where = f"{path}: record {item.id} (line {item.line_no})"
        if raw is None or not raw.strip():
            raise DataError(f"{where} has no label (field '{LABEL_FIELD}')")
        label = mapping.get(raw.strip(), raw.strip())
        if label not in classes:
            raise DataError(f"{where}: label {raw!r} is not one of the bundle's labels "
                            f"({', '.join(classes)}) (field '{LABEL_FIELD}')")
        labels[index] = label
    if not items:
        raise DataError(f"{path}: no records")
    return LabelledSet(items, labels, tuple(classes), str(path))


def timing_records(labelled: LabelledSet, limit: int, limits: ImageLimits | None = None) -> list[Record]:
    """Up to `limit` records of the set that predict cleanly (a text, and an image that decodes), in order.

    The timed loop runs on these, so one broken image in a split fails its record in the metric, not the row.
    """
    out: list[Record] = []
    for record in labelled.records:
        if len(out) >= limit:
            break
        if not record.image or not (record.text or "").strip():
            continue
        try:
            load_image(record.image, limits).close()
        except DataError:
            continue
        out.append(record)
    return out
