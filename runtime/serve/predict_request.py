"""The body of `POST /v1/predict`: JSON -> records, with one clear message for what the server refuses.

A body is one record object or a list of them: ``{"id", "text", "image_b64", "llava_text"?}``. The image comes
only as base64 bytes, never as a path on the server. Whole-request problems raise `RequestRejected` (a 4xx):
not JSON, not a record or a list of records, an empty list, too many records, a body over the size limit. A bad
record inside a good request becomes its `RecordError` (answered as that record's error, as in `predict`): no
usable id, a field of the wrong type, no image, an `image_b64` that is not valid base64, a 0-byte image.
Ids used twice in one request are answered, and reported (`duplicate_ids`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crisis_tool.runtime.records import Record, RecordError

Item = Record | RecordError
SOURCE = "<request>"


class RequestRejected(Exception):
    """The whole request is refused: HTTP `status` with a one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PredictRequest:
    """Parsed records, and whether the client sent one object (answered with one object) or a list."""

    items: list[Item]
    single: bool


def parse_predict_body(body: bytes, max_records: int) -> PredictRequest:
    """Records of a request body; RequestRejected for a body the server refuses as a whole."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: hostile nesting
        raise RequestRejected(400, f"malformed JSON: {exc}") from None
    single = isinstance(payload, dict)
    entries = [payload] if single else payload
    if not isinstance(entries, list):
        raise RequestRejected(400, "the body must be a record object or a list of records")
    if not entries:
        raise RequestRejected(400, "the body is an empty list")
    if len(entries) > max_records:
        raise RequestRejected(413, f"{len(entries)} records in one request; the limit is {max_records}")
    return PredictRequest([_parse_record(entry, n) for n, entry in enumerate(entries, start=1)], single)


def _parse_record(entry: Any, n: int) -> Item:
    where = f"record #{n} of the request"
    if not isinstance(entry, dict):
        return RecordError(None, f"{where} is not a JSON object", n, SOURCE)
    rid = entry.get("id")
    if rid is None or isinstance(rid, (dict, list, bool)) or str(rid) == "":
        return RecordError(None, f"{where} has no usable field 'id'", n, SOURCE)
    rid = str(rid)
    for key in ("text", "llava_text", "image_b64"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            return RecordError(rid, f"record {rid}: field '{key}' must be a string or null, "
                               f"got {type(value).__name__}", n, SOURCE)
    encoded = entry.get("image_b64")
    if encoded is None:
        return RecordError(rid, f"record {rid}: no image (field 'image_b64')", n, SOURCE)
    try:
        image = decode_image_b64(encoded, rid)
    except RequestRejected as exc:
        return RecordError(rid, exc.message, n, SOURCE)
    if not image:
        return RecordError(rid, f"record {rid}: empty image (field 'image_b64' holds 0 bytes)", n, SOURCE)
    return Record(rid, entry.get("text"), image, entry.get("llava_text"), n, SOURCE)


def decode_image_b64(encoded: str, rid: str) -> bytes:
    """Strict base64 (standard alphabet, padding checked); RequestRejected naming the record otherwise."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestRejected(400, f"record {rid}: field 'image_b64' is not valid base64 ({exc})") from None


def duplicate_ids(ids: Iterable[str | None]) -> dict[str, list[int]]:
    """{id: its 1-based positions} for every id used more than once (missing ids are not compared)."""
    positions: dict[str, list[int]] = {}
    for n, rid in enumerate(ids, start=1):
        if rid is not None:
            positions.setdefault(rid, []).append(n)
    return {rid: where for rid, where in positions.items() if len(where) > 1}


def describe_duplicates(duplicates: dict[str, list[int]], limit: int = 5) -> str:
    """One line: `id 'a' at records 1, 3; id 'b' at records 2, 4` (the first `limit` ids)."""
    shown = [f"id {rid!r} at records {', '.join(map(str, where))}" for rid, where in list(duplicates.items())[:limit]]
    more = f"; and {len(duplicates) - limit} more" if len(duplicates) > limit else ""
    return "; ".join(shown) + more
