"""Outputs of `crisis-tool label` that survive an interruption: one resumable partial per input.

While an input is labelled its answers are appended, in record order, to `NAME.predictions.<fmt>.partial`
(JSONL lines, whatever the format), next to `NAME.predictions.<fmt>.partial.json`, which names the input
with its size and modification time. Once every input of the run is answered, each partial becomes its output
(`label_groups`: grouped, then renamed for JSONL or converted for Parquet) and both files go. A rerun that
finds the partial of the same, unchanged input resumes after its last whole line. A partial of a changed input
is stale and removed, as are the temporaries a killed run leaves behind (`.NAME.*.partial`, from `atomic_output`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from crisis_tool.runtime.atomic_files import atomic_output, atomic_write_text

PARQUET_ROWS_PER_GROUP = 4096


def partial_paths(out: Path) -> tuple[Path, Path]:
    """(the partial answers, the note naming their input) of output `out`."""
    return out.with_name(out.name + ".partial"), out.with_name(out.name + ".partial.json")


def input_stamp(source: Path) -> dict[str, Any]:
    """What identifies an input between runs: its resolved path, size and modification time."""
    info = source.stat()
    return {"input": str(source.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def clean_stale(outputs: list[Path]) -> list[Path]:
    """Remove the temporaries of `outputs` that a killed run left, and partials of outputs already complete."""
    removed: list[Path] = []
    for out in outputs:
        leftovers = list(out.parent.glob(f".{_glob_escape(out.name)}.*.partial"))
        if out.exists():
            leftovers += [p for p in partial_paths(out) if p.exists()]
        for path in leftovers:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def resume_point(source: Path, out: Path) -> int:
    """Records of `source` already answered in `out`'s partial; 0 (and the partial removed) when it is stale."""
    part, note = partial_paths(out)
    try:
        saved = json.loads(note.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if saved != input_stamp(source) or not part.is_file():
        part.unlink(missing_ok=True)
        note.unlink(missing_ok=True)
        return 0
    return _trim_to_whole_lines(part)


def _trim_to_whole_lines(path: Path) -> int:
    """Cut `path` after its last complete JSON line (a killed writer may leave half a line); count the lines."""
    keep = lines = 0
    with open(path, "r+b") as fh:
        for raw in fh:
            try:
                complete = raw.endswith(b"\n") and isinstance(json.loads(raw), dict)
            except ValueError:
                complete = False
            if not complete:
                break
            keep += len(raw)
            lines += 1
        fh.truncate(keep)
    return lines


class PartialOutput:
    """The answers of one input, appended line by line to its partial; `finish` turns it into the output."""

    def __init__(self, source: Path, out: Path, output_format: str, done: int) -> None:
        self.out, self.format = out, output_format
        self.part, note = partial_paths(out)
        if done == 0:
            atomic_write_text(note, json.dumps(input_stamp(source)) + "\n")
        self._fh: IO[str] | None = open(self.part, "a" if done else "w", encoding="utf-8",  # noqa: SIM115
                                        buffering=1)  # line-buffered: a partial holds every line written

    def add(self, line: str) -> None:
        assert self._fh is not None
        self._fh.write(line + "\n")

    def keep(self) -> None:
        """Close, keeping the partial for a rerun to resume."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def seal(self) -> None:
        """Every answer is in: flush it to disk and close (the run's second pass makes it the output)."""
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.keep()


def write_parquet(lines_path: Path, out: Path) -> None:
    """Output lines (JSONL) -> a Parquet file written atomically, `PARQUET_ROWS_PER_GROUP` rows per group.

    Columns: id, label, confidence, probs (map; the one head's, null for several heads), needs_review, group,
    duplicate_of, error, and tasks (the per-task answers as the JSON of the output line).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("label", pa.string()), ("confidence", pa.float64()),
                        ("probs", pa.map_(pa.string(), pa.float64())), ("needs_review", pa.bool_()),
                        ("group", pa.string()), ("duplicate_of", pa.string()), ("error", pa.string()),
                        ("tasks", pa.string())])

    def columns(row: dict[str, Any]) -> dict[str, Any]:
        probs = row.get("probs")
        return {"id": row.get("id"), "label": row.get("label"), "confidence": row.get("confidence"),
                "probs": None if probs is None else list(probs.items()), "needs_review": row.get("needs_review"),
                "group": row.get("group"), "duplicate_of": row.get("duplicate_of"), "error": row.get("error"),
                "tasks": json.dumps(row.get("tasks") or {}, ensure_ascii=False)}

    with atomic_output(out, "wb") as fh, open(lines_path, encoding="utf-8") as lines:
        writer = pq.ParquetWriter(fh, schema)
        chunk: list[dict[str, Any]] = []
        for line in lines:
            chunk.append(columns(json.loads(line)))
            if len(chunk) == PARQUET_ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
        writer.close()
