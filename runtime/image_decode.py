"""Decoding untrusted images with bounded work: read, check, decode, convert to RGB.

Every limit is checked from the file's header, before any pixel is decoded (`ImageLimits`):

* `max_bytes`: the encoded file (50 MB by default; a path is opened only if it is a regular file, see
  `file_guard`);
* `max_pixels`: width x height (64 megapixels);
* `max_aspect_ratio`: long side / short side (50). CLIP's "shortest side" resize scales the short side to the
  model's size, so a 20000x1 strip would become a 4480000x224 intermediate; at 50:1 that intermediate is at
  most 224 x 11200 pixels (10 MB) and the resize's own buffer at most 4 x 224 x long side bytes (51 MB);
* `max_decoded_bytes`: the memory decoding takes (256 MiB), counted per mode: the decoded pixels as Pillow
  stores them (1 byte per pixel for 1/L/P, 2 for 16-bit, 4 for RGB, RGBA, CMYK, 32-bit and float), plus every
  full-size copy on the way to RGB (conversion, EXIF rotation), plus the decoder's own whole-image buffers
  (progressive JPEG coefficients: 2 bytes per pixel and channel; WebP and TIFF: one more image).

So one image never costs more than `max_decoded_bytes` + 64 MB for the resize + its encoded bytes: about
370 MB with the defaults, whatever its header claims. Only JPEG (and MPO), PNG, GIF, BMP, WebP and TIFF are opened.

`reduce_to` (the "fast" decode) lets JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling, Pillow's
`draft`) while both sides stay at least `reduce_to` pixels; the exact resize runs afterwards. Other formats
have no reduced decode in Pillow and decode exactly.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from crisis_tool.runtime.errors import DataError, UsageError
from crisis_tool.runtime.file_guard import DEFAULT_MAX_IMAGE_BYTES, UnsafeFileError, read_capped

MAX_PIXELS = 64_000_000
MAX_ASPECT_RATIO = 50.0
MAX_DECODED_BYTES = 256 * 1024 * 1024
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG includes MPO
DECODE_MODES = ("exact", "fast")
_WHOLE_IMAGE_DECODERS = ("WEBP", "TIFF")  # decoders that hold one more full image while decoding
_CHUNK_PIXELS = 1 << 18  # 16-bit / float conversion works on this many pixels at a time
_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image


class ImageLoadError(DataError):
    """An image is missing, empty, not an image, corrupt, truncated, or above one of the `ImageLimits`."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on the work one image may cost (see the module docstring); all are checked before decoding."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = MAX_PIXELS
    max_aspect_ratio: float = MAX_ASPECT_RATIO
    max_decoded_bytes: int = MAX_DECODED_BYTES

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_decoded_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"image limit {name} must be a positive integer, got {value!r}")
        ratio = self.max_aspect_ratio
        numeric = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
        if not numeric or not math.isfinite(ratio) or not 1 <= ratio <= MAX_ASPECT_RATIO:
            raise UsageError(
                f"image limit max_aspect_ratio must be between 1 and {MAX_ASPECT_RATIO:g}, got {ratio!r}"
            )


def check_decode_mode(mode: str) -> str:
    """`mode` if it is one of DECODE_MODES, else UsageError."""
    if mode not in DECODE_MODES:
        raise UsageError(f"decode mode {mode!r} is not one of {', '.join(DECODE_MODES)}")
    return mode


def read_image_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The bytes of image file `path`: a regular file (links followed, never blocking) of at most `max_bytes`.

    ImageLoadError (one line naming the file) for a missing file, a FIFO, a device, a folder or a larger file.
    """
    try:
        data = read_capped(path, max_bytes)
    except UnsafeFileError as exc:
        raise ImageLoadError(f"image file {path}: {exc.reason}") from None
    if not data:
        raise ImageLoadError(f"image file {path} is empty (0 bytes)")
    return data


def _bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of `mode` in Pillow's memory layout (multi-band modes use 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _conversion_bytes_per_pixel(mode: str, transparency: bool) -> int:
    """Bytes per pixel of the full-size copies `to_rgb` makes from `mode` (RGB is stored as 4 bytes)."""
    if mode == "RGB":
        return 0
    if mode.startswith("I") or mode == "F":
        return 1 + 4  # gray L, then RGB
    if mode == "PA" or (mode == "P" and transparency):
        return 4 + 4  # RGBA, then RGB
    return 4


def decode_cost(img: Image.Image, rotated: bool) -> int:
    """Bytes that decoding `img` (opened, not loaded) and converting it to RGB (`rotated`: and upright) hold."""
    pixels = img.width * img.height
    cost = pixels * (_bytes_per_pixel(img.mode)
                     + _conversion_bytes_per_pixel(img.mode, "transparency" in img.info))
    if rotated:
        cost += pixels * 4
    if img.format in ("JPEG", "MPO") and (img.info.get("progressive") or img.info.get("progression")):
        full_w, full_h = getattr(img, "_crisis_full_size", img.size)
        cost += full_w * full_h * 2 * len(img.getbands())  # whole-image DCT coefficients (4:4:4 bound)
    if img.format in _WHOLE_IMAGE_DECODERS:
        cost += pixels * _bytes_per_pixel(img.mode)
    return cost


def _orientation(img: Image.Image, loaded: bool = True) -> int:
    """The EXIF orientation (1 = upright). Before loading, only where reading it does not decode the image
    (a PNG may keep its EXIF after the pixels; Pillow would decode them to find it)."""
    if not loaded and img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep the pixels as stored
        return 1


def _check_header(img: Image.Image, label: str, limits: ImageLimits) -> None:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageLoadError(f"{label} is {width}x{height} pixels")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageLoadError(f"{label} is {width}x{height} = {pixels} pixels, above the limit of {limits.max_pixels}")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageLoadError(
            f"{label} is {width}x{height}, an aspect ratio of {ratio:.0f}:1, above the limit of "
            f"{limits.max_aspect_ratio:g}:1"
        )


def _check_cost(img: Image.Image, label: str, limits: ImageLimits, rotated: bool) -> None:
    cost = decode_cost(img, rotated)
    if cost > limits.max_decoded_bytes:
        raise ImageLoadError(
            f"{label} ({img.width}x{img.height}, mode {img.mode}) would take {cost / 2**20:.0f} MiB to decode, "
            f"above the limit of {limits.max_decoded_bytes / 2**20:.0f} MiB"
        )


def _scaled_gray(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float gray -> 8-bit L, in chunks of rows so the float copies stay small.

    Integer values 0..65535 scale as round(v * 255 / 65535); float 0..1 scales by 255; other ranges are
    stretched min..max (non-finite values become 0).
    """
    arr = np.asarray(img)
    rows = max(1, _CHUNK_PIXELS // max(1, img.width))
    lo, hi, any_finite = math.inf, -math.inf, False
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows].astype(np.float64)
        finite = block[np.isfinite(block)]
        if finite.size:
            any_finite = True
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not any_finite:
        lo = hi = 0.0
    integer = img.mode != "F"
    if integer and lo >= 0 and hi <= 65535:
        offset, factor = 0.0, 255.0 / 65535.0
    elif not integer and lo >= 0 and hi <= 1.0:
        offset, factor = 0.0, 255.0
    elif hi > lo:
        offset, factor = lo, 255.0 / (hi - lo)
    else:
        offset, factor = 0.0, 0.0
    out = np.empty(arr.shape, dtype=np.uint8)
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows].astype(np.float64)
        scaled = np.where(np.isfinite(block), (block - offset) * factor, 0.0)
        out[start : start + rows] = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    del arr
    return Image.fromarray(out, "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB.

    - 16/32-bit integer ("I;16*", "I"): values 0..65535 scale as round(v * 255 / 65535); other ranges are
      stretched min..max. 32-bit float ("F"): 0..1 scales by 255, other ranges are stretched min..max.
    - Alpha ("RGBA", "LA", "PA", palette transparency) is dropped exactly as ``img.convert("RGB")`` drops it:
      the colour channels are kept as stored, nothing is composited onto a background.
    - "P" with transparency goes through RGBA (same colours, no Pillow warning); "CMYK", "L", "1", "YCbCr"
      and the rest use Pillow's ``convert("RGB")``.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _scaled_gray(img).convert("RGB")
    if mode == "PA" or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(f"image mode {mode} cannot be converted to RGB ({exc})") from exc


def _reduce(img: Image.Image, reduce_to: int) -> None:
    """JPEG only: decode at the smallest DCT scale keeping both sides >= `reduce_to` (no-op otherwise)."""
    if img.format not in ("JPEG", "MPO"):
        return
    full = img.size
    img.draft(img.mode, (reduce_to, reduce_to))
    if img.size != full:
        img._crisis_full_size = full  # type: ignore[attr-defined]  # the coefficients stay full size


def _open(data: bytes, label: str, limits: ImageLimits, reduce_to: int | None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    rgb: Image.Image | None = None
    try:
        _check_header(img, label, limits)
        if reduce_to:
            _reduce(img, reduce_to)
        orientation = _orientation(img, loaded=False)
        _check_cost(img, label, limits, rotated=orientation in _TRANSPOSE)
        img.load()  # frame 0 of an animation: Image.open stays on the first frame
        if orientation == 1 and (orientation := _orientation(img)) in _TRANSPOSE:
            _check_cost(img, label, limits, rotated=True)  # EXIF found after the pixels: check the copy
        rgb = to_rgb(img)
    finally:
        if rgb is not img:
            img.close()  # frees the decoded pixels before the rotation's copy
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return rgb


def load_image(source: ImageSource, limits: ImageLimits | None = None, reduce_to: int | None = None) -> Image.Image:
    """Open, fully decode and return an upright RGB image; ImageLoadError with one clear line on any problem.

    A path is read with `read_image_bytes` (regular files only, at most `limits.max_bytes`); encoded bytes are
    held to the same limit. EXIF orientation is applied; animated images give their first frame; the header is
    checked against `limits` before decoding. With `reduce_to`, JPEGs decode at a reduced scale keeping both
    sides >= `reduce_to` (see the module docstring). A PIL image is taken as given and only converted to RGB.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    limits = limits or ImageLimits()
    if isinstance(source, (str, Path)):
        label = f"image file {source}"
        data = read_image_bytes(source, limits.max_bytes)
    else:
        label = "image data"
        data = source if isinstance(source, bytes) else bytes(source)
        if not data:
            raise ImageLoadError(f"{label} is empty (0 bytes)")
        if len(data) > limits.max_bytes:
            raise ImageLoadError(f"{label} is {len(data)} bytes, above the limit of {limits.max_bytes} bytes")
    try:
        return _open(data, label, limits, reduce_to)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{label} is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{label} is not a recognised image format (accepted: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except MemoryError:
        raise ImageLoadError(f"{label} ran out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - decoder errors: truncated or corrupt data
        raise ImageLoadError(f"{label} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
