"""LLaVA descriptions keyed by image_id: the JSONL written by `crisis-tool caption`, or a TSV with a
`LLaVA_text` column (the authors' enriched split files)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from crisis_tool.runtime.errors import DataError


def read_llava_file(path: str | Path) -> dict[str, str]:
    """image_id -> LLaVA text. Error rows of a caption JSONL (non-null `error`) are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"LLaVA file not found: {path} (--llava-file)")
    if path.suffix.lower() in (".tsv", ".txt"):
        return _read_tsv(path)
    texts: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image_id, text = row["image_id"], row["llava_text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{line_no}: expected a JSON object with image_id and llava_text ({exc})") from exc
            if row.get("error") is None and text:
                texts[str(image_id)] = str(text)
    return texts


def _read_tsv(path: Path) -> dict[str, str]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        fields = reader.fieldnames or []
        if "image_id" not in fields or "LLaVA_text" not in fields:
            raise DataError(f"{path}: a LLaVA TSV needs image_id and LLaVA_text columns (has {', '.join(fields)})")
        return {row["image_id"]: row["LLaVA_text"] for row in reader if row.get("LLaVA_text")}
