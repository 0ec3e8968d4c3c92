"""Image loading and CLIP preprocessing with numpy and Pillow only.

`preprocess_image` reproduces OpenCLIP's eval transform (``open_clip.image_transform(224, is_train=False)``):
torchvision ``Resize(size, bicubic)`` of the shortest side on a PIL image (output size
``int(size * long / short)`` for the long side, Pillow resampling with its built-in antialiasing),
``CenterCrop(size)`` (offsets ``int(round((dim - size) / 2))``, zero padding when the image is smaller),
``ToTensor`` (uint8 / 255 in float32) and ``Normalize`` (float32 ``(x - mean) / std``).

One intended difference: open_clip converts to RGB *after* resizing; we convert when loading, before
resizing (see `to_rgb`), so RGBA / palette / CMYK / 16-bit images are resampled as the RGB picture a person
sees. For RGB images (the CrisisMMD photos) the two are identical.

Decoding (`load_image`, `ImageLimits`, `to_rgb`) lives in `image_decode`, which bounds the work an untrusted
image may cost; it is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.image_decode import (
    MAX_ASPECT_RATIO,
    MAX_PIXELS,
    ImageLimits,
    ImageLoadError,
    ImageSource,
    check_decode_mode,
    load_image,
    to_rgb,
)

__all__ = [
    "MAX_PIXELS", "ImageLimits", "ImageLoadError", "ImageSource", "PreprocessConfig", "load_image",
    "load_preprocessed", "preprocess_image", "to_rgb",
]

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESIZE_MODES = ("shortest", "squash")
FAST_REDUCING_GAP = 3.0  # the fast decode's box pre-shrink stops at 3x the target (model-input cosine >= 0.9999)
CROPS = ("center",)


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


def preprocess_image(img: Image.Image, cfg: PreprocessConfig | None = None, reducing_gap: float | None = None
                     ) -> np.ndarray:
    """One PIL image -> normalised float32 [3, size, size], identical to OpenCLIP's eval transform.

    `reducing_gap` (the fast decode only): Pillow first shrinks by an integer factor with a box filter while the
    image stays `reducing_gap` times larger than the target, then resamples exactly (None: exact throughout)."""
    cfg = cfg or PreprocessConfig()
    new_size = _resized_size(img.width, img.height, cfg)
    if new_size[0] * new_size[1] > cfg.size * cfg.size * MAX_ASPECT_RATIO:
        raise ImageLoadError(
            f"image {img.width}x{img.height} would resize to {new_size[0]}x{new_size[1]}, an aspect ratio above "
            f"{MAX_ASPECT_RATIO:g}:1"
        )
    img = to_rgb(img)
    if new_size != img.size:
        img = img.resize(new_size, INTERPOLATIONS[cfg.interpolation], reducing_gap=reducing_gap)
    img = _center_crop(img, cfg.size)
    pixels = np.asarray(img, dtype=np.float32) / np.float32(255)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def load_preprocessed(
    source: ImageSource, cfg: PreprocessConfig | None = None, limits: ImageLimits | None = None,
    decode: str = "exact",
) -> np.ndarray:
    """Decode `source` within `limits` and preprocess it -> float32 [3, size, size].

    `decode="fast"` lets JPEGs decode at a reduced scale keeping both sides >= 2 x the model's input size (libjpeg
    DCT scaling), then resizes with Pillow's `reducing_gap` FAST_REDUCING_GAP (any format); "exact" (the
    default, and what training uses) decodes at full size and resamples in one exact step. The fast path is
    held to a model-input cosine >= 0.9999 against exact (`benchmarks/decode_speed.py`; min 0.999903 on the 4
    shared photos at 680x510 to 2048x1536 JPEG).
    """
    return decode_and_preprocess(source, cfg, limits, decode)[1]


def decode_and_preprocess(
    source: ImageSource, cfg: PreprocessConfig | None = None, limits: ImageLimits | None = None,
    decode: str = "exact",
) -> tuple[Image.Image, np.ndarray]:
    """(the decoded image, its preprocessed float32 [3, size, size]): `load_preprocessed` that also returns the
    image, so a caller can derive more from one decode (e.g. the near-duplicate hash)."""
    cfg = cfg or PreprocessConfig()
    fast = check_decode_mode(decode) == "fast"
    image = load_image(source, limits, reduce_to=2 * cfg.size if fast else None)
    return image, preprocess_image(image, cfg, reducing_gap=FAST_REDUCING_GAP if fast else None)
