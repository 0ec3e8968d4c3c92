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

import contextlib
import json
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from crisis_tool.runtime.errors import DataError, UsageError
from crisis_tool.runtime.file_guard import UnsafeFileError, file_kind, read_capped
from crisis_tool.runtime.line_reader import MAX_LINE_BYTES, LineTooLong, bounded_lines, fd_lines

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
TSV_REQUIRED = ("tweet_id", "image_id", "tweet_text", "image")
LLAVA_COLUMNS = ("LLaVA_text", "llava_text")
MAX_TEXT_FILE_BYTES = 1024 * 1024  # a folder's same-stem .txt: far more than any tweet
_BOM = b"\xef\xbb\xbf"
_TSV_ROOT_HINT = "{path}: a TSV input needs --image-root (the CrisisMMD folder holding data_image/)"


@dataclass(frozen=True)
class Record:
    """One tweet-image pair to classify. `line_no` is the 1-based line (or file index) in `source`.

    `image` is a path (str) or the image's encoded bytes (e.g. from an HTTP request; never a server path).
    The readers below always give paths.
    """

    id: str
    text: str | None
    image: str | bytes | None
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
    path = Path(value)
    with contextlib.suppress(RuntimeError):  # "~nosuchuser/x.jpg": kept literally, then missing like any file
        path = path.expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path)


def too_long(line_no: int, source: str) -> RecordError:
    """The error record of a line over MAX_LINE_BYTES (read past, not kept)."""
    return RecordError(None, f"{source}: line {line_no} is over {MAX_LINE_BYTES} bytes; not read", line_no, source)


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
    except (ValueError, RecursionError) as exc:  # RecursionError: hostile nesting
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
    lines: Iterable[bytes | LineTooLong], source: str, image_base: Path | None
) -> Iterator[Item]:
    """Records of JSONL lines (`line_reader`'s: a line over its limit is that line's error), read lazily."""
    guard = _DuplicateGuard()
    for line_no, raw in enumerate(lines, start=1):
        if isinstance(raw, LineTooLong):
            yield too_long(line_no, source)
            continue
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]  # a UTF-8 byte order mark, as Windows editors write it
        item = parse_jsonl_line(raw, line_no, source, image_base)
        if item is not None:
            yield guard(item)


def read_jsonl(path: str | Path, image_root: str | Path | None = None) -> Iterator[Item]:
    """Records of a JSONL file; relative images resolve against `image_root` or the file's folder."""
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.resolve().parent
    with open(path, "rb") as fh:
        yield from iter_jsonl_stream(bounded_lines(fh), str(path), base)


def _stdin_lines() -> Iterator[bytes | LineTooLong]:
    """stdin's lines: from its descriptor when it has one, else (a test's stand-in) from its buffer."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        yield from bounded_lines(sys.stdin.buffer)
        return
    yield from fd_lines(fd)


def read_stdin(image_root: str | Path | None = None) -> Iterator[Item]:
    """Records of JSONL on stdin, one line at a time as it arrives."""
    base = Path(image_root) if image_root is not None else Path.cwd()
    yield from iter_jsonl_stream(_stdin_lines(), "<stdin>", base)


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
        lines = bounded_lines(fh)
        first = next(lines, b"")
        if not first:
            raise DataError(f"{path}: empty file (expected a CrisisMMD header line)")
        if isinstance(first, LineTooLong):
            raise DataError(f"{path}: the header line is over {MAX_LINE_BYTES} bytes (not a CrisisMMD TSV)")
        header = _tsv_header(first, path)
        col = {name: i for i, name in enumerate(header)}
        llava_col = next((col[c] for c in LLAVA_COLUMNS if c in col), None)
        for line_no, raw in enumerate(lines, start=2):
            if isinstance(raw, LineTooLong):
                yield too_long(line_no, source)
                continue
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


def _entry_problem(path: Path) -> str | None:
    """Why a folder entry cannot be read as a file (following links), or None for a regular file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a dangling symbolic link" if path.is_symlink() else "no such file"
    except OSError as exc:
        return f"cannot be inspected ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return f"{file_kind(mode)}, not a regular file"


def _folder_text(text_file: Path, rid: str, index: int, source: str) -> str | None | RecordError:
    """The same-stem .txt of a folder image: its text, None when absent, or this record's error."""
    if not text_file.is_symlink() and not text_file.exists():
        return None
    try:
        return read_capped(text_file, MAX_TEXT_FILE_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        return RecordError(rid, f"record {rid}: {text_file.name} is not valid UTF-8 (field 'text')", index, source)
    except UnsafeFileError as exc:
        return RecordError(rid, f"record {rid}: cannot read {text_file.name} (field 'text'): {exc.reason}",
                           index, source)


def read_folder(path: str | Path) -> Iterator[Item]:
    """Images of a folder (sorted by name); text from a same-stem .txt file when present.

    Sub-folders and regular files that are neither images nor their .txt are skipped. Every other entry that
    cannot be read as a file (a FIFO, a device, a socket, a dangling or looping link) gives an error record.
    """
    path = Path(path)
    source = str(path)
    entries = sorted(path.iterdir())
    images = {e.stem for e in entries if e.suffix.lower() in IMAGE_SUFFIXES}
    index = 0
    for entry in entries:
        is_image = entry.suffix.lower() in IMAGE_SUFFIXES
        if not is_image and entry.suffix.lower() == ".txt" and entry.stem in images:
            continue  # read with its image
        if not is_image and (entry.is_dir() or entry.is_file()):
            continue
        if entry.is_dir() and not entry.is_symlink():
            continue
        index += 1
        problem = _entry_problem(entry)
        if problem is not None:
            yield RecordError(entry.name, f"record {entry.name}: bad image (field 'image', {entry}): {problem}",
                              index, source)
            continue
        text = _folder_text(entry.with_suffix(".txt"), entry.name, index, source)
        if isinstance(text, RecordError):
            yield text
            continue
        yield Record(entry.name, text, str(entry), None, index, source)


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
    try:  # readers are lazy: find an unreadable input now, before an output is opened
        open(path, "rb").close()
    except OSError as exc:
        raise UsageError(f"cannot read input {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        if image_root is None:
            raise UsageError(_TSV_ROOT_HINT.format(path=path))
        return read_tsv(path, image_root)
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(path, image_root)
    raise UsageError(f"{path}: unsupported input (expected .tsv, .jsonl, a folder of images or '-')")
