"""Input records for `crisis-tool predict`: readers that never stop on one bad record.

Every reader yields, for each input record in order, either a `Record` or a `RecordError` (a record that
could not be read: malformed line, invalid UTF-8, duplicate id, wrong column count). Only problems with the
source as a whole (missing file, bad TSV header) raise `UsageError`/`DataError` before the first record.

Sources (`read_records` dispatches on them):

* CrisisMMD split TSV (``*.tsv``): tab separated, no quoting (csv.QUOTE_NONE), header with at least
  ``tweet_id, image_id, tweet_text, image`` (the 9- or 6-column CrisisMMD layouts), optional ``LLaVA_text``
  (or ``llava_text``) column. id = ``image_id`` (a tweet_id repeats across its images); image =
  ``image_root / image``; ``image_root`` is required (the CrisisMMD root the image column is relative to).
* JSONL (``*.jsonl``, ``*.ndjson``, ``*.json``) of ``{"id", "text", "image", "llava_text"?}``; a relative
  image path resolves against ``image_root`` or else the JSONL file's folder. Blank lines are skipped.
* ``-``: the same JSONL on stdin, read lazily line by line (relative images against ``image_root`` or the
  current directory).
* A folder of images (sorted by name, not recursive): id = file name, text = the same-stem ``.txt`` file's
  content (absent -> no text, which the predictor reports as an error record).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from crisis_tool.runtime.errors import DataError, UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
TSV_REQUIRED = ("tweet_id", "image_id", "tweet_text", "image")
LLAVA_COLUMNS = ("LLaVA_text", "llava_text")
_TSV_ROOT_HINT = "{path}: a TSV input needs --image-root (the CrisisMMD folder holding data_image/)"


@dataclass(frozen=True)
class Record:
    """One tweet-image pair to classify. `line_no` is the 1-based line (or file index) in `source`."""

    id: str
    text: str | None
    image: str | None
    llava_text: str | None = None
    line_no: int = 0
    source: str = ""


@dataclass(frozen=True)
class RecordError:
    """A record that could not be read; `id` is None when the line was too broken to find it."""

    id: str | None
    error: str
    line_no: int = 0
    source: str = ""


Item = Record | RecordError


class _DuplicateGuard:
    """Turns the second and later records with one id into `RecordError`s."""

    def __init__(self, unit: str = "line") -> None:
        self._seen: dict[str, int] = {}
        self._unit = unit

    def __call__(self, item: Item) -> Item:
        if not isinstance(item, Record):
            return item
        first = self._seen.setdefault(item.id, item.line_no)
        if first != item.line_no:
            message = f"duplicate id {item.id}, first seen on {self._unit} {first}"
            return RecordError(item.id, message, item.line_no, item.source)
        return item


def _resolve_image(value: str | None, base: Path | None) -> str | None:
    if value is None or value == "":
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path)


def _decode(raw: bytes, line_no: int, source: str) -> str | RecordError:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"{source}: invalid UTF-8 on line {line_no} (byte {exc.start})"
        return RecordError(None, message, line_no, source)


def _optional_str(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"field '{key}' must be a string or null, got {type(value).__name__}")


def parse_jsonl_line(raw: bytes, line_no: int, source: str, image_base: Path | None) -> Item | None:
    """One JSONL line -> Record or RecordError (None for a blank line)."""
    text = _decode(raw, line_no, source)
    if isinstance(text, RecordError):
        # Try to recover the id for the error line; the record itself is still refused.
        try:
            rid = json.loads(raw.decode("utf-8", errors="replace")).get("id")
        except (ValueError, AttributeError):
            rid = None
        return RecordError(None if rid is None else str(rid), text.error, line_no, source)
    text = text.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return RecordError(None, f"{source}: malformed JSON on line {line_no} ({exc})", line_no, source)
    if not isinstance(obj, dict):
        return RecordError(None, f"{source}: line {line_no} is not a JSON object", line_no, source)
    rid = obj.get("id")
    if rid is None or isinstance(rid, (dict, list, bool)) or str(rid) == "":
        return RecordError(None, f"{source}: line {line_no} has no usable field 'id'", line_no, source)
    rid = str(rid)
    try:
        record_text = _optional_str(obj, "text")
        image = _optional_str(obj, "image")
        llava = _optional_str(obj, "llava_text")
    except ValueError as exc:
        return RecordError(rid, f"record {rid} (line {line_no}): {exc}", line_no, source)
    return Record(rid, record_text, _resolve_image(image, image_base), llava, line_no, source)


def iter_jsonl_stream(
    stream: BinaryIO | Iterable[bytes], source: str, image_base: Path | None
) -> Iterator[Item]:
    """Records of a binary JSONL stream, read lazily (works for stdin)."""
    guard = _DuplicateGuard()
    for line_no, raw in enumerate(stream, start=1):
        item = parse_jsonl_line(raw, line_no, source, image_base)
        if item is not None:
            yield guard(item)


def read_jsonl(path: str | Path, image_root: str | Path | None = None) -> Iterator[Item]:
    """Records of a JSONL file; relative images resolve against `image_root` or the file's folder."""
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.resolve().parent
    with open(path, "rb") as fh:
        yield from iter_jsonl_stream(fh, str(path), base)


def read_stdin(image_root: str | Path | None = None) -> Iterator[Item]:
    """Records of JSONL on stdin, one line at a time as it arrives."""
    base = Path(image_root) if image_root is not None else Path.cwd()
    yield from iter_jsonl_stream(iter(sys.stdin.buffer.readline, b""), "<stdin>", base)


def _tsv_header(raw: bytes, path: Path) -> list[str]:
    try:
        header = raw.decode("utf-8-sig").rstrip("\r\n").split("\t")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: header line is not valid UTF-8") from exc
    missing = [c for c in TSV_REQUIRED if c not in header]
    if missing:
        raise DataError(
            f"{path}: not a CrisisMMD split TSV (header lacks {', '.join(missing)}; "
            f"found {', '.join(header)})"
        )
    return header


def read_tsv(path: str | Path, image_root: str | Path | None) -> Iterator[Item]:
    """Records of a CrisisMMD split TSV (id = image_id, image = image_root / image column)."""
    path = Path(path)
    if image_root is None:
        raise UsageError(_TSV_ROOT_HINT.format(path=path))
    base = Path(image_root)
    source = str(path)
    guard = _DuplicateGuard()
    with open(path, "rb") as fh:
        first = fh.readline()
        if not first:
            raise DataError(f"{path}: empty file (expected a CrisisMMD header line)")
        header = _tsv_header(first, path)
        col = {name: i for i, name in enumerate(header)}
        llava_col = next((col[c] for c in LLAVA_COLUMNS if c in col), None)
        for line_no, raw in enumerate(fh, start=2):
            line = _decode(raw, line_no, source)
            if isinstance(line, RecordError):
                yield line
                continue
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            # QUOTE_NONE: a tab always separates fields, quotes are ordinary characters.
            fields = line.split("\t")
            if len(fields) != len(header):
                yield RecordError(
                    fields[col["image_id"]] if len(fields) > col["image_id"] else None,
                    f"{source}: line {line_no} has {len(fields)} columns, the header has {len(header)}",
                    line_no,
                    source,
                )
                continue
            llava = fields[llava_col] if llava_col is not None else None
            yield guard(
                Record(
                    fields[col["image_id"]],
                    fields[col["tweet_text"]],
                    _resolve_image(fields[col["image"]], base),
                    llava or None,
                    line_no,
                    source,
                )
            )


def read_folder(path: str | Path) -> Iterator[Item]:
    """Images of a folder (sorted by name); text from a same-stem .txt file when present."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for index, image in enumerate(files, start=1):
        text_file = image.with_suffix(".txt")
        text: str | None = None
        if text_file.is_file():
            try:
                text = text_file.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                yield RecordError(image.name, f"record {image.name}: {text_file.name} is not valid UTF-8",
                                  index, str(path))
                continue
            except OSError as exc:
                yield RecordError(image.name, f"record {image.name}: cannot read {text_file.name} ({exc})",
                                  index, str(path))
                continue
        yield Record(image.name, text, str(image), None, index, str(path))


def read_records(source: str | Path, image_root: str | Path | None = None) -> Iterator[Item]:
    """Dispatch on the source: "-" (JSONL on stdin), a folder, a .tsv or a .jsonl file.

    Raises UsageError (before yielding anything) for a missing or unsupported source.
    """
    if str(source) == "-":
        return read_stdin(image_root)
    path = Path(source)
    if image_root is not None and not Path(image_root).is_dir():
        raise UsageError(f"--image-root {image_root} is not a folder")
    if path.is_dir():
        return read_folder(path)
    if not path.is_file():
        raise UsageError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        if image_root is None:
            raise UsageError(_TSV_ROOT_HINT.format(path=path))
        return read_tsv(path, image_root)
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(path, image_root)
    raise UsageError(f"{path}: unsupported input (expected .tsv, .jsonl, a folder of images or '-')")
