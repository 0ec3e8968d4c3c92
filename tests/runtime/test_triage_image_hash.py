"""The image near-duplicate key (pHash, crisis_tool.runtime.triage.image_hash) on the real photos of
../shared/data/photos and their copies as a tweet stream makes them, and on hostile files."""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from crisis_tool.runtime.image_decode import ImageLimits, ImageLoadError
from crisis_tool.runtime.triage.grouping import NearDuplicateGrouper
from crisis_tool.runtime.triage.image_hash import MAX_DISTANCE, hamming, image_hash, image_hash_of, is_near_duplicate

PHOTOS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "photos"
PHOTO_NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


def photo_bytes() -> dict[str, bytes]:
    """name -> file bytes of the four photos; skips the test when the folder is absent."""
    if not all((PHOTOS_DIR / name).is_file() for name in PHOTO_NAMES):
        pytest.skip(f"photos not found in {PHOTOS_DIR}")
    return {name: (PHOTOS_DIR / name).read_bytes() for name in PHOTO_NAMES}


def jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def copies(data: bytes) -> dict[str, bytes]:
    """Near-duplicates of one photo: resized to 1200 px long side + JPEG q=60, and 5% crops + JPEG q=60."""
    with Image.open(io.BytesIO(data)) as opened:
        img = opened.convert("RGB")
    w, h = img.size
    scale = 1200 / max(w, h)
    dx, dy = round(w * 0.05), round(h * 0.05)
    return {
        "resized_q60": jpeg(img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS), 60),
        "crop5_centre_q60": jpeg(img.crop((dx // 2, dy // 2, w - (dx - dx // 2), h - (dy - dy // 2))), 60),
        "crop5_corner_q60": jpeg(img.crop((0, 0, w - dx, h - dy)), 60),
    }


def test_resized_reencoded_and_cropped_copies_are_near_duplicates() -> None:
    for name, data in photo_bytes().items():
        original = image_hash(data)
        for kind, copy in copies(data).items():
            distance = hamming(original, image_hash(copy))
            assert distance <= MAX_DISTANCE, f"{name} {kind}: {distance} bits"
            if kind == "resized_q60":
                assert distance <= 2, f"{name} {kind}: {distance} bits"


def test_distinct_photos_are_not_near_duplicates_with_margin() -> None:
    hashes = {name: image_hash(data) for name, data in photo_bytes().items()}
    for a, b in itertools.combinations(hashes, 2):
        assert hamming(hashes[a], hashes[b]) > 2 * MAX_DISTANCE, (a, b)
        assert not is_near_duplicate(hashes[a], hashes[b])


def test_the_int_is_imagehash_phash_bit_for_bit_and_a_path_hashes_like_its_bytes() -> None:
    data = photo_bytes()["chelsea.png"]
    with Image.open(io.BytesIO(data)) as img:
        expected = int(str(imagehash.phash(img.convert("RGB"))), 16)
        assert image_hash_of(img.convert("RGB")) == expected
    assert image_hash(PHOTOS_DIR / "chelsea.png") == expected == image_hash(data)
    assert 0 <= expected < 2**64


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"") + _chunk(b"IEND", b"")


def test_hostile_images_fail_with_one_line_before_decoding() -> None:
    with pytest.raises(ImageLoadError, match="above the limit"):
        image_hash(_png_header_only(9000, 9000))  # 81 megapixels, read from the header only
    with pytest.raises(ImageLoadError, match="not a recognised image"):
        image_hash(b"not an image at all")
    with pytest.raises(ImageLoadError, match="above the limit"):
        image_hash(photo_bytes()["rocket.jpg"], ImageLimits(max_bytes=1000))


def test_copies_share_a_group_and_distinct_photos_do_not() -> None:
    grouper = NearDuplicateGrouper()
    for name, data in photo_bytes().items():
        assert grouper.add(name, image_hash(data)) == (name, None)
    for name, data in photo_bytes().items():
        for kind, copy in copies(data).items():
            assert grouper.add(f"{name}/{kind}", image_hash(copy)) == (name, name), (name, kind)
