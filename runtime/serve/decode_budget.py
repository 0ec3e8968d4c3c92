"""The pixel budget of one request, checked from image headers before any pixel is decoded.

A JPEG of a few KB can declare 7900x7900 pixels: decoding it costs about 0.4 s and 250 MB. The server reads
each image's width and height from its header (Pillow's lazy `Image.open` parses the header only) and refuses
the request with 413 when one image declares more than `max_image_pixels` or all of them together more than
`max_request_pixels`. Bytes that are not a recognisable image are left to the Predictor, which answers them
as that record's error.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from crisis_tool.runtime.image_decode import ALLOWED_FORMATS
from crisis_tool.runtime.records import Record, RecordError
from crisis_tool.runtime.serve.predict_request import RequestRejected


@dataclass(frozen=True)
class Declared:
    """What an image's header declares: its pixels, and how to say so ("7900x7900 = 62410000 pixels")."""

    pixels: int
    text: str


def declared(data: bytes) -> Declared | None:
    """What the image's header declares, or None when it is not an image Pillow recognises.

    A header Pillow itself calls a decompression bomb (over twice its own pixel limit) is refused by Pillow
    before its size is read: the pixel count comes from Pillow's message.
    """
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:  # header only: nothing is decoded
            width, height = img.size
            return Declared(width * height, f"{width}x{height} = {width * height} pixels")
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found is None:
            return Declared(2**62, "more pixels than Pillow's decompression-bomb limit")
        return Declared(int(found.group(1)), f"{int(found.group(1))} pixels")
    except Exception:  # noqa: BLE001 - not an image (or a broken header): the Predictor reports it per record
        return None


def check_pixel_budget(items: Sequence[Record | RecordError], max_image_pixels: int, max_request_pixels: int) -> int:
    """The declared pixels of the request's images; RequestRejected(413) naming the record over a budget."""
    total = 0
    for item in items:
        if not isinstance(item, Record) or not isinstance(item.image, bytes) or not item.image:
            continue
        header = declared(item.image)
        if header is None:
            continue
        if header.pixels > max_image_pixels:
            raise RequestRejected(413, f"record {item.id}: image declares {header.text}, above the per-image "
                                  f"budget of {max_image_pixels}")
        total += header.pixels
        if total > max_request_pixels:
            raise RequestRejected(413, f"the request's images declare over {max_request_pixels} pixels together "
                                  f"(the per-request budget), reached at record {item.id}")
    return total
