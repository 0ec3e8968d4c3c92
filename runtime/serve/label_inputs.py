"""The files `crisis-tool label` reads and writes: discovery, output names, and records as Ray Data rows.

Inputs are JSONL (`.jsonl`, `.ndjson`, `.json`), CrisisMMD TSV (`.tsv`, needs an image root) or Parquet
(`.parquet`, columns id, text, image, llava_text?); a path may be a file, a folder (its input files, not
recursive) or a glob. Records are read by the runtime's readers, so a bad line becomes an error row exactly
as in `predict`. Parquet rows go through the JSONL reader (one row = one JSON object), with the same checks.
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
from crisis_tool.runtime.records import JSONL_SUFFIXES, Record, RecordError, iter_jsonl_stream, read_records

PARQUET_SUFFIX = ".parquet"
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
    import pyarrow.parquet as pq

    base = image_root if image_root is not None else path.resolve().parent
    lines = (json.dumps(row, default=str).encode("utf-8")
             for batch in pq.ParquetFile(path).iter_batches(batch_size=4096) for row in batch.to_pylist())
    yield from iter_jsonl_stream(lines, str(path), base)


def check_readable(path: Path, image_root: Path | None) -> None:
    """Raise the reader's UsageError/DataError (missing file, bad TSV header) before any Ray work starts."""
    try:
        next(iter(iter_records(path, image_root)), None)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):
            raise UsageError(f"{path}: not a readable Parquet file ({exc})") from None
        raise


def record_rows(item: dict[str, Any], image_root: str | None) -> Iterator[dict[str, Any]]:
    """Ray Data `flat_map`: one row `{"file", "path"}` -> a row per record of that file (errors included)."""
    root = Path(image_root) if image_root else None
    for record in iter_records(Path(item["path"]), root):
        if isinstance(record, RecordError):
            yield {"file": item["file"], "line_no": record.line_no, "id": record.id or "", "text": "",
                   "image": "", "llava_text": "", "error": record.error}
        else:
            yield {"file": item["file"], "line_no": record.line_no, "id": record.id, "text": record.text or "",
                   "image": record.image or "", "llava_text": record.llava_text or "", "error": ""}


def row_items(batch: dict[str, Any]) -> list[Record | RecordError]:
    """Records of a Ray Data batch (columns of `record_rows`; "" stands for a missing value)."""
    items: list[Record | RecordError] = []
    for k in range(len(batch["file"])):
        rid, line_no, error = str(batch["id"][k]), int(batch["line_no"][k]), str(batch["error"][k])
        if error:
            items.append(RecordError(rid or None, error, line_no))
        else:
            text, image, llava = (str(batch[key][k]) or None for key in ("text", "image", "llava_text"))
            items.append(Record(rid, text, image, llava, line_no))
    return items
