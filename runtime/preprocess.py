"""Image loading and CLIP preprocessing with numpy and Pillow only.

`preprocess_image` reproduces OpenCLIP's eval transform (``open_clip.image_transform(224, is_train=False)``):
torchvision ``Resize(size, bicubic)`` of the shortest side on a PIL image (output size
``int(size * long / short)`` for the long side, Pillow resampling with its built-in antialiasing),
``CenterCrop(size)`` (offsets ``int(round((dim - size) / 2))``, zero padding when the image is smaller),
``ToTensor`` (uint8 / 255 in float32) and ``Normalize`` (float32 ``(x - mean) / std``).

One intended difference: open_clip converts to RGB *after* resizing; we convert when loading, before
resizing (see `to_rgb`), so RGBA / palette / CMYK / 16-bit images are resampled as the RGB picture a person
sees. For RGB images (the CrisisMMD photos) the two are identical.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from crisis_tool.runtime.errors import DataError, UsageError

MAX_PIXELS = 64_000_000  # 64 megapixels: refuse anything larger before decoding it
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESIZE_MODES = ("shortest", "squash")
CROPS = ("center",)

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image


class ImageLoadError(DataError):
    """An image file is missing, empty, not an image, corrupt, truncated or too large."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels are prepared for the image encoder (OpenCLIP ViT-B-32 eval defaults)."""

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop: str = "center"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise UsageError(f"preprocess size must be a positive integer, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UsageError(f"preprocess mean/std must hold 3 values (std > 0), got {self.mean}, {self.std}")
        for name, value, allowed in (
            ("interpolation", self.interpolation, tuple(INTERPOLATIONS)),
            ("resize_mode", self.resize_mode, RESIZE_MODES),
            ("crop", self.crop, CROPS),
        ):
            if value not in allowed:
                raise UsageError(f"preprocess {name} {value!r} is not supported; expected one of {allowed}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(getattr(self, f.name)) if f.name in ("mean", "std") else getattr(self, f.name)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of to_dict; also takes open_clip's preprocess_cfg (square size, mode "RGB", fill_color)."""
        data = dict(data)
        size = data.get("size", 224)
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise UsageError(f"preprocess size {size!r}: only square sizes are supported")
            data["size"] = int(size[0])
        if data.pop("mode", "RGB") != "RGB":
            raise UsageError("preprocess mode must be 'RGB'")
        data.pop("fill_color", None)  # only used by open_clip's 'longest' resize mode, which we do not offer
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"unknown preprocess config keys: {', '.join(unknown)}")
        return cls(**data)


def _label(source: ImageSource) -> str:
    return f"image file {source}" if isinstance(source, (str, Path)) else "image data"


def _scale_to_uint8(arr: np.ndarray, assume_16bit: bool) -> np.ndarray:
    """Map integer or float pixel values to 0..255 by scaling (never by clipping)."""
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if assume_16bit and lo >= 0 and hi <= 65535:
        scaled = arr * (255.0 / 65535.0)
    elif not assume_16bit and lo >= 0 and hi <= 1.0:
        scaled = arr * 255.0
    elif hi > lo:
        scaled = (arr - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(arr)
    return np.clip(np.round(np.where(finite, scaled, 0.0)), 0, 255).astype(np.uint8)


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
    if mode.startswith("I"):
        gray = _scale_to_uint8(np.asarray(img), assume_16bit=True)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(img), assume_16bit=False), "L").convert("RGB")
    if mode == "PA" or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(f"image mode {mode} cannot be converted to RGB ({exc})") from exc


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, fully decode and return an RGB image; ImageLoadError with one clear line on any problem.

    EXIF orientation is applied (ImageOps.exif_transpose); animated images give their first frame;
    images with more than `max_pixels` pixels are refused from their header, before decoding.
    A PIL image is taken as given (already decoded and oriented) and only converted to RGB.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    label = _label(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(f"{label} not found")
        if not path.is_file():
            raise ImageLoadError(f"{label} is not a file")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{label} is empty (0 bytes)")
        opener: Any = path
    else:
        if len(source) == 0:
            raise ImageLoadError(f"{label} is empty (0 bytes)")
        opener = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opener) as img:
                width, height = img.size
                if width * height > max_pixels:
                    pixels = width * height
                    raise ImageLoadError(
                        f"{label} is {width}x{height} = {pixels} pixels, above the limit of {max_pixels}"
                    )
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                try:
                    oriented = ImageOps.exif_transpose(img)
                except Exception:  # unreadable EXIF: keep the pixels as stored
                    oriented = img.copy()
                return to_rgb(oriented if oriented is not None else img.copy())
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{label} is too large to decode safely ({exc})") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"{label} cannot be read (permission denied)") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{label} is not a recognised image format") from exc
    except Exception as exc:  # decoder errors: truncated or corrupt data
        raise ImageLoadError(f"{label} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc


def _resized_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """torchvision's _compute_resized_output_size for an int size (shortest) or (size, size) (squash)."""
    if cfg.resize_mode == "squash":
        return cfg.size, cfg.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.size, int(cfg.size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision's center_crop on a PIL image: zero pad when too small, then round((dim - size) / 2)."""
    width, height = img.size
    if size > width or size > height:
        pad_left = (size - width) // 2 if size > width else 0
        pad_top = (size - height) // 2 if size > height else 0
        canvas = Image.new(img.mode, (width + max(size - width, 0), height + max(size - height, 0)), 0)
        canvas.paste(img, (pad_left, pad_top))
        img = canvas
        width, height = img.size
        if width == size and height == size:
            return img
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess_image(img: Image.Image, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """One PIL image -> normalised float32 [3, size, size], identical to OpenCLIP's eval transform."""
    cfg = cfg or PreprocessConfig()
    img = to_rgb(img)
    new_size = _resized_size(img.width, img.height, cfg)
    if new_size != img.size:
        img = img.resize(new_size, INTERPOLATIONS[cfg.interpolation])
    img = _center_crop(img, cfg.size)
    pixels = np.asarray(img, dtype=np.float32) / np.float32(255)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(images: Sequence[ImageSource], cfg: PreprocessConfig | None = None,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """PIL images, paths or encoded bytes -> float32 [B, 3, size, size]."""
    cfg = cfg or PreprocessConfig()
    if len(images) == 0:
        return np.zeros((0, 3, cfg.size, cfg.size), dtype=np.float32)
    return np.stack([preprocess_image(load_image(image, max_pixels), cfg) for image in images])


class ImagePreprocessor:
    """Callable: a path, bytes or PIL image -> float32 [3, size, size]; `.batch(sources)` -> [B, 3, ...]."""

    def __init__(self, cfg: PreprocessConfig | None = None, max_pixels: int = MAX_PIXELS) -> None:
        self.cfg = cfg or PreprocessConfig()
        self.max_pixels = max_pixels

    def __call__(self, source: ImageSource) -> np.ndarray:
        return preprocess_image(load_image(source, self.max_pixels), self.cfg)

    def batch(self, sources: Sequence[ImageSource]) -> np.ndarray:
        return preprocess_batch(sources, self.cfg, self.max_pixels)
