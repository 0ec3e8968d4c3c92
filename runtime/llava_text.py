"""LLaVA descriptions keyed by image_id: the JSONL written by `crisis-tool caption`, or a TSV with
`image_id` and `LLaVA_text` columns (the authors' enriched split files)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import DataError


def parse_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield (line number, row); a truncated last line (crash mid-write) is ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue
            raise DataError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: not a JSON object")
        yield n, row


def _read_tsv(path: Path) -> dict[str, str]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        fields = {f.strip(): f for f in reader.fieldnames or []}
        text_col = fields.get("LLaVA_text") or fields.get("llava_text")
        if "image_id" not in fields or text_col is None:
            raise DataError(
                f"{path} has no image_id and LLaVA_text columns (found: {', '.join(fields) or 'none'})"
            )
        return {row[fields["image_id"]].strip(): (row[text_col] or "").strip() for row in reader}


def read_llava_file(path: str | Path) -> dict[str, str]:
    """image_id -> LLaVA text from a `crisis-tool caption` JSONL (error rows skipped) or a TSV with
    `image_id` and `LLaVA_text` columns. Raises DataError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"LLaVA text file not found: {path}")
    try:
        with path.open(encoding="utf-8") as fh:
            head = fh.read(1024).lstrip()
        if not head.startswith("{"):
            return _read_tsv(path)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    texts: dict[str, str] = {}
    for n, row in parse_jsonl(path):
        if "image_id" not in row or "llava_text" not in row:
            raise DataError(f"{path}:{n}: row lacks image_id or llava_text")
        if row.get("error") is None and row["llava_text"] is not None:
            texts[str(row["image_id"])] = str(row["llava_text"])
    return texts


def with_llava_text(items: Iterable[Any], texts: dict[str, str]) -> Iterator[Any]:
    """Records with `llava_text` filled from `texts` by record id (TSV records: image_id) where they have none;
    read errors and records that carry their own caption pass through unchanged."""
    from dataclasses import replace

    from crisis_tool.runtime.records import Record

    for item in items:
        if isinstance(item, Record) and item.llava_text is None and item.id is not None and item.id in texts:
            item = replace(item, llava_text=texts[item.id])
        yield item
