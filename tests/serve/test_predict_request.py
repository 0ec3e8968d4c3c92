"""`POST /v1/predict` bodies: what is refused as a whole (4xx) and what becomes one record's error."""

from __future__ import annotations

import json

import pytest
from serve_helpers import b64, png_bytes

from crisis_tool.runtime.records import Record, RecordError
from crisis_tool.runtime.serve.predict_request import (
    RequestRejected,
    describe_duplicates,
    duplicate_ids,
    parse_predict_body,
)


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_one_record_and_a_list() -> None:
    image = png_bytes(1)
    one = parse_predict_body(body({"id": 7, "text": "flood", "image_b64": b64(image)}), max_records=4)
    assert one.single and one.items == [Record("7", "flood", image, None, 1, "<request>")]
    many = parse_predict_body(body([{"id": "a", "text": "t", "image_b64": b64(image), "llava_text": "cap"}] * 2), 4)
    assert not many.single and [r.llava_text for r in many.items] == ["cap", "cap"]


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b'"a string"', 400, "a record object or a list"),
        (b"[]", 400, "empty list"),
        (body([{"id": i} for i in range(5)]), 413, "5 records in one request; the limit is 4"),
    ],
)
def test_whole_request_refused(raw: bytes, status: int, message: str) -> None:
    with pytest.raises(RequestRejected) as info:
        parse_predict_body(raw, max_records=4)
    assert info.value.status == status
    assert message in info.value.message


@pytest.mark.parametrize(
    ("record", "rid", "message"),
    [
        ({"text": "t", "image_b64": "AAAA"}, None, "record #1 of the request has no usable field 'id'"),
        ({"id": "", "text": "t"}, None, "no usable field 'id'"),
        ({"id": ["x"], "text": "t"}, None, "no usable field 'id'"),
        ({"id": "m", "text": "t"}, "m", "record m: no image (field 'image_b64')"),
        ({"id": "z", "text": "t", "image_b64": ""}, "z", "record z: empty image (field 'image_b64' holds 0 bytes)"),
        ({"id": "n", "text": 5, "image_b64": "AAAA"}, "n", "record n: field 'text' must be a string or null"),
        ({"id": "p", "text": "t", "image_b64": 12}, "p", "field 'image_b64' must be a string"),
        ({"id": "x", "text": "t", "image_b64": "@@not base64@@"}, "x", "record x: field 'image_b64' is not valid"),
        ({"id": "x", "text": "t", "image_b64": "abc"}, "x", "not valid base64"),  # bad padding
        ({"id": "x", "text": "t", "image_b64": "AAAA!*!*"}, "x", "not valid base64"),  # not the alphabet
        ("just a string", None, "record #1 of the request is not a JSON object"),
    ],
)
def test_bad_record_is_its_own_error(record: object, rid: str | None, message: str) -> None:
    good = {"id": "ok", "text": "t", "image_b64": b64(png_bytes(2))}
    parsed = parse_predict_body(body([record, good]), max_records=4)
    bad, fine = parsed.items
    assert isinstance(bad, RecordError) and bad.id == rid and message in bad.error
    assert isinstance(fine, Record) and fine.id == "ok"


def test_duplicate_ids_are_found_and_described() -> None:
    found = duplicate_ids(["a", "b", None, "a", None, "b", "a", "c"])
    assert found == {"a": [1, 4, 7], "b": [2, 6]}
    assert describe_duplicates(found) == "id 'a' at records 1, 4, 7; id 'b' at records 2, 6"
    assert describe_duplicates({str(i): [1, 2] for i in range(7)}, limit=2).endswith("; and 5 more")
    assert duplicate_ids(["a", "b", None, None]) == {}
