"""Decompression and resize amplification: a hostile image costs its record an error, never the process's memory.

The images are decoded in a subprocess whose address space is capped (RLIMIT_AS) at what it had after imports
plus `STATED_BYTES`, the figure the README states per image (the decode budget, the resize's buffers and the
encoded bytes); a regression there is a MemoryError or a killed child, not a machine out of memory. Good images
in the same child, some near the budget, must still decode.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crisis_tool.runtime.image_decode import MAX_DECODED_BYTES, ImageLimits, ImageLoadError, load_image

STATED_BYTES = MAX_DECODED_BYTES + 64 * 2**20 + 50 * 2**20  # ~370 MiB: decode + resize + encoded bytes

_CHILD = r"""
import json, resource, sys
from crisis_tool.runtime.image_decode import ImageLoadError
from crisis_tool.runtime.preprocess import load_preprocessed

def vm_bytes():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))

paths, budget = json.loads(sys.argv[1]), int(sys.argv[2])
load_preprocessed(paths[-1])  # warm up the decoders' own allocations with the small good image
limit = vm_bytes() + budget
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for path in paths:
    try:
        array = load_preprocessed(path)
        print(json.dumps({"path": path, "ok": list(array.shape)}), flush=True)
    except ImageLoadError as exc:
        print(json.dumps({"path": path, "error": str(exc)}), flush=True)
    except MemoryError:
        print(json.dumps({"path": path, "memory": True}), flush=True)
"""


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(path: Path, width: int, height: int, bit_depth: int = 8, colour_type: int = 0,
         palette: bytes | None = None) -> Path:
    """A complete PNG of zero pixels, compressed row by row (never held whole in memory)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row = bytes(1 + (width * channels * bit_depth + 7) // 8)
    packer = zlib.compressobj(9)
    body = bytearray()
    for _ in range(height):
        body += packer.compress(row)
    body += packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", ihdr)]
    if palette is not None:
        chunks.append(_chunk(b"PLTE", palette))
    chunks += [_chunk(b"IDAT", bytes(body)), _chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))
    return path


def _gif_with_big_frame(path: Path, screen: int, frame: int) -> Path:
    """A GIF whose logical screen is `screen` pixels square but whose first frame is `frame` pixels square."""
    header = b"GIF89a" + struct.pack("<HHBBB", screen, screen, 0xF0, 0, 0) + bytes(6)  # 2-colour global table
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, frame, frame, 0)
    lzw = b"\x02" + b"\x02\x4c\x01\x00"  # min code size 2, a tiny (short) data block, then the terminator
    path.write_bytes(header + descriptor + lzw + b"\x3b")
    return path


def _header_only(path: Path, fmt: str, width: int, height: int) -> Path:
    """A BMP or TIFF whose header claims width x height (its pixel data is missing)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, fmt)
    data = bytearray(buf.getvalue())
    if fmt == "BMP":
        struct.pack_into("<ii", data, 18, width, height)
    else:  # TIFF: patch the ImageWidth (256) and ImageLength (257) entries of the first IFD
        ifd = struct.unpack_from("<I", data, 4)[0]
        for i in range(struct.unpack_from("<H", data, ifd)[0]):
            tag, kind = struct.unpack_from("<HH", data, ifd + 2 + 12 * i)
            if tag in (256, 257):
                value = width if tag == 256 else height
                struct.pack_into("<HHI", data, ifd + 2 + 12 * i, tag, 4, 1)
                struct.pack_into("<I", data, ifd + 2 + 12 * i + 8, value)
    path.write_bytes(bytes(data))
    return path


def _good(path: Path) -> Path:
    y, x = np.mgrid[0:300, 0:400]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("hostile")
    gray_palette = bytes(v for i in range(256) for v in (i, i, i))
    files = {
        "wide_20000x1.png": _png(root / "wide_20000x1.png", 20000, 1),
        "wide_50000x1.png": _png(root / "wide_50000x1.png", 50000, 1),
        "tall_1x60000.png": _png(root / "tall_1x60000.png", 1, 60000),
        "rgba_30000x2.png": _png(root / "rgba_30000x2.png", 30000, 2, colour_type=6),
        "sixteen_bit_7999x7999.png": _png(root / "sixteen_bit_7999x7999.png", 7999, 7999, bit_depth=16),
        "rgba16_6000x6000.png": _png(root / "rgba16_6000x6000.png", 6000, 6000, 16, 6),
        "palette_8000x8000.png": _png(root / "palette_8000x8000.png", 8000, 8000, 8, 3, gray_palette),
        "gif_frame_8000.gif": _gif_with_big_frame(root / "gif_frame_8000.gif", 16, 8000),
        "bmp_60000x60000.bmp": _header_only(root / "bmp_60000x60000.bmp", "BMP", 60000, 60000),
        "tiff_9000x9000.tif": _header_only(root / "tiff_9000x9000.tif", "TIFF", 9000, 9000),
        "tiff_30000x1.tif": _header_only(root / "tiff_30000x1.tif", "TIFF", 30000, 1),
        # accepted, and close to the stated figure: the budget is real, not only a refusal
        "gray_7000x7000.png": _png(root / "gray_7000x7000.png", 7000, 7000),
        "gray_50000x1000.png": _png(root / "gray_50000x1000.png", 50000, 1000),
        "good.png": _good(root / "good.png"),
    }
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([str(p) for p in files.values()]), str(STATED_BYTES)],
        capture_output=True, text=True, timeout=240,
    )
    lines = [json.loads(line) for line in child.stdout.splitlines()]
    assert child.returncode == 0 and len(lines) == len(files), child.stderr[-2000:]
    return {Path(line["path"]).name: line for line in lines}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wide_20000x1.png", "20000x1, an aspect ratio of 20000:1, above the limit of 50:1"),
        ("wide_50000x1.png", "aspect ratio of 50000:1"),
        ("tall_1x60000.png", "aspect ratio of 60000:1"),
        ("rgba_30000x2.png", "aspect ratio of 15000:1"),
        ("sixteen_bit_7999x7999.png", "(7999x7999, mode I;16) would take 427 MiB to decode, above the limit of 256"),
        ("rgba16_6000x6000.png", "(6000x6000, mode RGBA) would take 275 MiB"),
        ("palette_8000x8000.png", "(8000x8000, mode P) would take 305 MiB"),
        ("gif_frame_8000.gif", "(8000x8000, mode P) would take"),
        ("bmp_60000x60000.bmp", "is too large to decode safely"),
        ("tiff_9000x9000.tif", "9000x9000 = 81000000 pixels, above the limit"),
        ("tiff_30000x1.tif", "aspect ratio of 30000:1"),
    ],
)
def test_hostile_image_is_its_records_error(results: dict[str, dict], name: str, message: str) -> None:
    assert "memory" not in results[name], f"{name} ran out of the stated {STATED_BYTES} bytes"
    assert message in results[name].get("error", ""), results[name]


@pytest.mark.parametrize("name", ["gray_7000x7000.png", "gray_50000x1000.png", "good.png"])
def test_good_images_still_work_within_the_stated_memory(results: dict[str, dict], name: str) -> None:
    assert results[name].get("ok") == [3, 224, 224], results[name]


def test_decode_cost_counts_the_mode(tmp_path: Path) -> None:
    """Same pixel count, different modes: 16-bit and RGBA cost more than 8-bit gray, so the budget refuses them."""
    limits = ImageLimits(max_decoded_bytes=6_000_000)  # 1000x1000: L costs 5 MB, I;16 7 MB, RGBA 8 MB
    assert load_image(_png(tmp_path / "l.png", 1000, 1000), limits).size == (1000, 1000)
    for name, depth, colour in (("i16.png", 16, 0), ("rgba.png", 8, 6)):
        with pytest.raises(ImageLoadError, match="above the limit of 6 MiB"):
            load_image(_png(tmp_path / name, 1000, 1000, depth, colour), limits)


def test_progressive_jpeg_counts_its_coefficient_buffer(tmp_path: Path) -> None:
    img = Image.new("RGB", (1000, 1000), (10, 120, 200))
    img.save(tmp_path / "base.jpg")
    img.save(tmp_path / "prog.jpg", progressive=True)
    limits = ImageLimits(max_decoded_bytes=5_000_000)  # baseline: 4 MB; progressive: + 6 MB of coefficients
    assert load_image(tmp_path / "base.jpg", limits).size == (1000, 1000)
    with pytest.raises(ImageLoadError, match="would take 10 MiB"):
        load_image(tmp_path / "prog.jpg", limits)


def test_formats_outside_the_list_are_refused(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "a.ppm")
    with pytest.raises(ImageLoadError, match="not a recognised image format"):
        load_image(tmp_path / "a.ppm")
