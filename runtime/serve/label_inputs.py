"""The files `crisis-tool label` reads and writes: discovery, output names, and records as Ray Data rows.

Inputs are JSONL (`.jsonl`, `.ndjson`, `.json`), CrisisMMD TSV (`.tsv`, needs an image root) or Parquet
(`.parquet`, columns id, text, image, llava_text?); a path may be a file, a folder (its input files, not
recursive) or a glob. Records are read by the runtime's readers, so a bad line becomes an error row exactly
as in `predict`. Parquet rows go through the JSONL reader (one row = one JSON object), with the same checks;
a Parquet file whose footer is damaged, or (the rest of) a row group that cannot be decoded, is one error row
naming it. Row groups are decoded PARQUET_BATCH_ROWS rows at a time, so memory does not follow their size.
In the rows, "" stands for a missing string (a column of nulls would not keep its string type).
Each input `NAME.ext` yields `NAME.predictions.<format>` in the output folder.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.line_reader import LineTooLong, bounded_lines
from crisis_tool.runtime.records import (
    JSONL_SUFFIXES,
    Record,
    RecordError,
    _DuplicateGuard,
    parse_jsonl_line,
    read_records,
)

PARQUET_SUFFIX = ".parquet"
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time
INPUT_SUFFIXES = JSONL_SUFFIXES | {".tsv", PARQUET_SUFFIX}


def discover_inputs(patterns: Sequence[str]) -> list[Path]:
    """Input files of files, folders and globs, in the order given (each folder or glob sorted), once each."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            files = [p for p in matches if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES]
            if not files:
                raise UsageError(f"--input {pattern} matches no input files ({', '.join(sorted(INPUT_SUFFIXES))})")
        elif Path(pattern).is_dir():
            files = sorted(p for p in Path(pattern).iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            if not files:
                raise UsageError(f"--input {pattern} holds no input files ({', '.join(sorted(INPUT_SUFFIXES))})")
        elif Path(pattern).is_file():
            if Path(pattern).suffix.lower() not in INPUT_SUFFIXES:
                raise UsageError(f"{pattern}: unsupported input (expected {', '.join(sorted(INPUT_SUFFIXES))})")
            files = [Path(pattern)]
        else:
            raise UsageError(f"input not found: {pattern}")
        for path in files:
            found.setdefault(path.resolve(), None)
    return list(found)


def output_paths(inputs: Sequence[Path], folder: Path, output_format: str) -> list[Path]:
    """`NAME.predictions.<format>` per input; UsageError when two inputs would share one output."""
    outputs = [folder / f"{path.stem}.predictions.{output_format}" for path in inputs]
    seen: dict[Path, Path] = {}
    for path, out in zip(inputs, outputs, strict=True):
        if out in seen:
            raise UsageError(f"{seen[out]} and {path} would both write {out.name}; label them in separate runs")
        seen[out] = path
    return outputs


def iter_records(path: Path, image_root: Path | None) -> Iterator[Record | RecordError]:
    """Records of one input file; relative images resolve against `image_root` or the file's folder."""
    if path.suffix.lower() != PARQUET_SUFFIX:
        yield from read_records(path, image_root)
        return
    yield from iter_parquet_records(path, image_root if image_root is not None else path.resolve().parent)


def iter_parquet_records(path: Path, base: Path) -> Iterator[Record | RecordError]:
    """Rows of a Parquet file as records (row N is "line" N); an unreadable file or row group is one error."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged footer
        yield RecordError(None, f"{path}: unreadable Parquet file, nothing in it was labelled ({_one_line(exc)})", 0,
                          str(path))
        return
    guard, first_row = _DuplicateGuard("row"), 1
    for group, size in enumerate(sizes):
        row, last = first_row, first_row + size - 1
        try:  # in batches: a few hundred KB of dictionary-encoded rows can decode to GBs of Python objects
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                for values in batch.to_pylist():
                    item = parse_jsonl_line(json.dumps(values, default=str).encode("utf-8"), row, str(path), base)
                    row += 1
                    if item is not None:
                        yield guard(item)
        except Exception as exc:
            yield RecordError(None, f"{path}: Parquet row group {group} (rows {row}-{last}) is unreadable, "
                              f"its rows were not labelled ({_one_line(exc)})", row, str(path))
        first_row += size


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def count_records(path: Path) -> int:
    """About how many records `path` holds (non-blank lines; Parquet rows), for a progress bar; 0 if unknown."""
    try:
        if path.suffix.lower() == PARQUET_SUFFIX:
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        with open(path, "rb") as fh:
            lines = sum(1 for raw in bounded_lines(fh) if isinstance(raw, LineTooLong) or raw.strip())
        return max(lines - 1, 0) if path.suffix.lower() == ".tsv" else lines
    except Exception:
        return 0


def check_readable(path: Path, image_root: Path | None) -> None:
    """Raise the reader's UsageError/DataError (missing file, bad TSV header) before any Ray work starts."""
    try:
        next(iter(iter_records(path, image_root)), None)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def record_rows(item: dict[str, Any], image_root: str | None) -> Iterator[dict[str, Any]]:
    """Ray Data `flat_map`: `{"file", "path", "skip"}` -> a row per record of that file from record number
    `skip` on (errors included; `seq` numbers them from 0 in the file), then one `end` row whose `seq` is the
    file's record count. A file that fails part-way gives one error row for the rest."""
    root, skip, seq = Path(image_root) if image_root else None, int(item.get("skip", 0)), 0
    base = {"file": item["file"], "end": False}
    try:
        for record in iter_records(Path(item["path"]), root):
            if seq >= skip:
                yield base | {"seq": seq} | _record_columns(record)
            seq += 1
    except Exception as exc:  # e.g. the file vanished or a disk error after the run started
        if seq >= skip:
            failed = RecordError(None, f"{item['path']}: reading failed after {seq} records ({_one_line(exc)})", seq)
            yield base | {"seq": seq} | _record_columns(failed)
        seq += 1
    yield base | {"seq": seq, "end": True} | _record_columns(RecordError(None, "", 0))


def _record_columns(record: Record | RecordError) -> dict[str, Any]:
    if isinstance(record, RecordError):
        return {"line_no": record.line_no, "id": record.id or "", "text": "", "image": "", "llava_text": "",
                "error": record.error}
    return {"line_no": record.line_no, "id": record.id, "text": record.text or "", "image": record.image or "",
            "llava_text": record.llava_text or "", "error": ""}


def row_items(batch: dict[str, Any], rows: Sequence[int] | None = None) -> list[Record | RecordError]:
    """Records of a Ray Data batch (columns of `record_rows`; "" stands for a missing value), all or `rows`."""
    items: list[Record | RecordError] = []
    for k in range(len(batch["file"])) if rows is None else rows:
        rid, line_no, error = str(batch["id"][k]), int(batch["line_no"][k]), str(batch["error"][k])
        if error:
            items.append(RecordError(rid or None, error, line_no))
        else:
            text, image, llava = (str(batch[key][k]) or None for key in ("text", "image", "llava_text"))
            items.append(Record(rid, text, image, llava, line_no))
    return items
