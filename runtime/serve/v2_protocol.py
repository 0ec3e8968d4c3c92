"""The Open Inference Protocol v2 (KServe v2 / Triton HTTP) for the served bundle: requests in, answers out.

Inputs (BYTES, shape [N] or [N, 1]): `image` (the encoded image file; in JSON, base64 text), `text` (UTF-8),
and optionally `id` and `llava_text`. Tensors may come as JSON `data` or in the binary tensor data extension
(`Inference-Header-Content-Length`, each BYTES element a little-endian uint32 length and its bytes), which is
what `tritonclient` sends by default. Outputs, per head: `{task}_label` (BYTES [N]), `{task}_probs` (FP32
[N, classes], the bundle's label order) and, where the head has a review threshold, `{task}_needs_review`
(BOOL [N]); plus `error` (BYTES [N], "" for a record that was answered). A record that fails gets label "",
probs 0 and its error, as in `/v1/predict`; the others are answered. Answers are JSON (the client reads both).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crisis_tool.runtime.records import Record, RecordError
from crisis_tool.runtime.serve.predict_request import RequestRejected
from crisis_tool.runtime.serve.task_view import HeadInfo, TaskAnswer

INPUTS = ("image", "text", "id", "llava_text")
REQUIRED = ("image", "text")
ERROR_OUTPUT = "error"
SOURCE = "<v2 request>"


@dataclass(frozen=True)
class InferRequest:
    """Parsed records (one per row), the request id, and the outputs asked for (None: all)."""

    items: list[Record | RecordError]
    request_id: str | None
    outputs: list[str] | None


def output_specs(heads: Sequence[HeadInfo]) -> list[dict[str, Any]]:
    """Name, datatype and shape of every output (model metadata); -1 is the batch axis."""
    specs: list[dict[str, Any]] = []
    for head in heads:
        specs.append({"name": f"{head.task}_label", "datatype": "BYTES", "shape": [-1]})
        specs.append({"name": f"{head.task}_probs", "datatype": "FP32", "shape": [-1, len(head.labels)]})
        if head.has_review:
            specs.append({"name": f"{head.task}_needs_review", "datatype": "BOOL", "shape": [-1]})
    specs.append({"name": ERROR_OUTPUT, "datatype": "BYTES", "shape": [-1]})
    return specs


def model_metadata(name: str, heads: Sequence[HeadInfo]) -> dict[str, Any]:
    """`GET /v2/models/{name}`: inputs, outputs, and each head's labels (in `parameters`)."""
    return {
        "name": name, "versions": ["1"], "platform": "crisis-tool",
        "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in INPUTS],
        "outputs": output_specs(heads),
        "parameters": {"labels": {h.task: list(h.labels) for h in heads}, "required_inputs": list(REQUIRED)},
    }


def parse_infer(body: bytes, header_length: str | None, max_records: int) -> InferRequest:
    """Records of a v2 infer body; RequestRejected (400/413) for a request refused as a whole."""
    header, binary = _split(body, header_length)
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestRejected(400, f"malformed JSON in the inference header: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestRejected(400, "the inference request needs an 'inputs' list")
    columns = _columns(request["inputs"], binary)
    missing = [n for n in REQUIRED if n not in columns]
    if missing:
        raise RequestRejected(400, f"missing input(s) {', '.join(missing)}; the model takes {', '.join(INPUTS)}")
    sizes = {name: len(values) for name, values in columns.items()}
    n = sizes["image"]
    if len(set(sizes.values())) != 1:
        raise RequestRejected(400, f"inputs have different batch sizes: {sizes}")
    if n == 0:
        raise RequestRejected(400, "the inputs hold no records")
    if n > max_records:
        raise RequestRejected(413, f"{n} records in one request; the limit is {max_records}")
    items = [_record(columns, row) for row in range(n)]
    rid = request.get("id")
    outputs = request.get("outputs")
    names = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise RequestRejected(400, "'outputs' must be a list of {\"name\": ...} objects")
        names = [o["name"] for o in outputs]
    return InferRequest(items, str(rid) if rid is not None else None, names)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise RequestRejected(400, f"bad Inference-Header-Content-Length {header_length!r} for a body of "
                              f"{len(body)} bytes")
    cut = int(header_length)
    return body[:cut], body[cut:]


def _columns(inputs: list[Any], binary: bytes) -> dict[str, list[bytes]]:
    """{input name: its elements as bytes}, from JSON data or the binary section (consumed in order)."""
    columns: dict[str, list[bytes]] = {}
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestRejected(400, "each input needs a 'name'")
        name = tensor["name"]
        if name not in INPUTS:
            raise RequestRejected(400, f"unknown input {name!r}; the model takes {', '.join(INPUTS)}")
        if name in columns:
            raise RequestRejected(400, f"input {name!r} given twice")
        if tensor.get("datatype") != "BYTES":
            raise RequestRejected(400, f"input {name!r} must be BYTES, not {tensor.get('datatype')!r}")
        shape = tensor.get("shape")
        if not (isinstance(shape, list) and 1 <= len(shape) <= 2 and all(type(d) is int and d >= 0 for d in shape)
                and (len(shape) == 1 or shape[1] == 1)):
            raise RequestRejected(400, f"input {name!r} must have shape [N] or [N, 1], not {shape!r}")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise RequestRejected(400, f"input {name!r}: binary_data_size {size!r} runs past the body")
            values = _unpack_bytes(binary[offset:offset + size], name)
            offset += size
        else:
            values = _json_bytes(tensor.get("data"), name)
        if len(values) != shape[0]:
            raise RequestRejected(400, f"input {name!r} has {len(values)} elements; its shape says {shape[0]}")
        columns[name] = values
    if offset != len(binary):
        raise RequestRejected(400, f"{len(binary) - offset} bytes of binary data belong to no input")
    return columns


def _unpack_bytes(blob: bytes, name: str) -> list[bytes]:
    """Elements of a serialized BYTES tensor: each a uint32 little-endian length, then that many bytes."""
    values, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise RequestRejected(400, f"input {name!r}: truncated element length at byte {pos}")
        (length,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + length > len(blob):
            raise RequestRejected(400, f"input {name!r}: element of {length} bytes runs past its data")
        values.append(blob[pos:pos + length])
        pos += length
    return values


def _json_bytes(data: Any, name: str) -> list[bytes]:
    if isinstance(data, list) and data and isinstance(data[0], list):  # [N, 1] written nested
        data = [row[0] if isinstance(row, list) and len(row) == 1 else row for row in data]
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise RequestRejected(400, f"input {name!r}: 'data' must be a list of strings")
    if name != "image":
        return [v.encode("utf-8") for v in data]
    return [_b64_or_empty(v) for v in data]


def _b64_or_empty(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b"\0invalid-base64"  # marked here, reported per record in `_record`


def _record(columns: dict[str, list[bytes]], row: int) -> Record | RecordError:
    rid_raw = columns.get("id", [None] * (row + 1))[row]
    rid = str(row) if rid_raw is None else rid_raw.decode("utf-8", "replace")
    if rid == "":
        return RecordError(None, f"record #{row} of the request has an empty 'id'", row + 1, SOURCE)
    image = columns["image"][row]
    if image == b"\0invalid-base64":
        return RecordError(rid, f"record {rid}: input 'image' is not valid base64", row + 1, SOURCE)
    if not image:
        return RecordError(rid, f"record {rid}: empty image (input 'image' holds 0 bytes)", row + 1, SOURCE)
    texts = {}
    for name in ("text", "llava_text"):
        raw = columns.get(name, [None] * (row + 1))[row]
        try:
            texts[name] = None if raw is None else raw.decode("utf-8")
        except UnicodeDecodeError:
            return RecordError(rid, f"record {rid}: input '{name}' is not UTF-8", row + 1, SOURCE)
    return Record(rid, texts["text"], image, texts["llava_text"], row + 1, SOURCE)


def infer_response(model: str, request: InferRequest, heads: Sequence[HeadInfo],
                   answers: Sequence[dict[str, TaskAnswer]], errors: Sequence[str | None]) -> dict[str, Any]:
    """The v2 answer: per head label / probs (/ needs_review), and `error`, one row per record."""
    n = len(answers)
    outputs: dict[str, dict[str, Any]] = {}
    for head in heads:
        rows = [a.get(head.task) for a in answers]
        outputs[f"{head.task}_label"] = {"datatype": "BYTES", "shape": [n],
                                         "data": [r.label if r and r.label is not None else "" for r in rows]}
        outputs[f"{head.task}_probs"] = {"datatype": "FP32", "shape": [n, len(head.labels)],
                                         "data": [float(r.probs.get(label, 0.0)) if r else 0.0
                                                  for r in rows for label in head.labels]}
        if head.has_review:
            outputs[f"{head.task}_needs_review"] = {"datatype": "BOOL", "shape": [n],
                                                    "data": [bool(r and r.needs_review) for r in rows]}
    outputs[ERROR_OUTPUT] = {"datatype": "BYTES", "shape": [n], "data": [e or "" for e in errors]}
    wanted = request.outputs if request.outputs is not None else list(outputs)
    unknown = [name for name in wanted if name not in outputs]
    if unknown:
        raise RequestRejected(400, f"unknown output(s) {', '.join(unknown)}; the model has {', '.join(outputs)}")
    answer: dict[str, Any] = {"model_name": model, "model_version": "1",
                              "outputs": [{"name": name, **outputs[name]} for name in wanted]}
    if request.request_id is not None:
        answer["id"] = request.request_id
    return answer
