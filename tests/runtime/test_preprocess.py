"""Runtime preprocessing vs OpenCLIP's own eval transform (open_clip is imported here only, as the reference).

The reference side opens the same file with Pillow, applies ImageOps.exif_transpose (open_clip does not, a
caller must) and converts to RGB *before* open_clip's transform: plain ``convert("RGB")`` for every mode but
16-bit, where it uses the documented scaling round(v / 257) instead of Pillow's clipping. open_clip itself
converts after resizing; for RGB and grayscale images the test also runs it unconverted.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from crisis_tool.runtime.errors import DataError, UsageError
from crisis_tool.runtime.preprocess import (
    MAX_PIXELS,
    ImageLimits,
    ImageLoadError,
    PreprocessConfig,
    load_image,
    load_preprocessed,
    preprocess_image,
    to_rgb,
)

open_clip = pytest.importorskip("open_clip")

RNG = np.random.default_rng(1234)


def _rgb(width: int, height: int) -> Image.Image:
    """Smooth gradients plus noise, so resampling errors show up."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    noise = RNG.integers(-40, 40, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _sixteen_bit(width: int, height: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 65536, size=(height, width), dtype=np.uint16))


def _palette_with_transparency() -> Image.Image:
    img = _rgb(120, 90).quantize(colors=16)
    img.info["transparency"] = 3
    return img


CASES = {
    "landscape.jpg": lambda: _rgb(640, 480),
    "portrait.png": lambda: _rgb(480, 640),
    "tiny.png": lambda: _rgb(10, 7),
    "wide.jpg": lambda: _rgb(1000, 300),
    "odd.png": lambda: _rgb(333, 517),
    "almost_square.png": lambda: _rgb(225, 224),
    "exact.png": lambda: _rgb(224, 224),
    "gray.png": lambda: _rgb(300, 200).convert("L"),
    "bilevel.png": lambda: _rgb(250, 260).convert("1"),
    "rgba.png": lambda: Image.merge("RGBA", (*_rgb(256, 200).split(), _rgb(256, 200).getchannel(0))),
    "gray_alpha.png": lambda: _rgb(230, 310).convert("LA"),
    "palette.png": lambda: _rgb(400, 250).quantize(colors=64),
    "palette_transparent.png": _palette_with_transparency,
    "cmyk.jpg": lambda: _rgb(320, 240).convert("CMYK"),
    "sixteen_bit.png": lambda: _sixteen_bit(301, 203),
    "sixteen_bit.tif": lambda: _sixteen_bit(97, 131),
}


def _reference_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):
        gray = np.round(np.asarray(img).astype(np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return img.convert("RGB")


@pytest.fixture(scope="module")
def reference_transform():
    return open_clip.image_transform(224, is_train=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_open_clip_eval_transform(tmp_path: Path, reference_transform, name: str) -> None:
    path = tmp_path / name
    CASES[name]().save(path)
    with Image.open(path) as img:
        expected = reference_transform(_reference_rgb(img)).numpy()
        if img.mode in ("RGB", "L"):
            np.testing.assert_allclose(reference_transform(img).numpy(), expected, atol=1e-5, rtol=0)
    got = load_preprocessed(path)
    assert got.dtype == np.float32 and got.shape == (3, 224, 224)
    assert np.abs(got - expected).max() <= 1e-5


def test_exif_rotated_jpeg(tmp_path: Path, reference_transform) -> None:
    img = _rgb(320, 160)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    loaded = load_image(path)
    assert loaded.size == (160, 320)
    with Image.open(path) as raw:
        assert raw.size == (320, 160)
        expected = reference_transform(_reference_rgb(raw)).numpy()
    assert np.abs(preprocess_image(loaded) - expected).max() <= 1e-5


@pytest.mark.parametrize(
    ("options", "size"),
    [({"resize_mode": "squash"}, 224), ({"interpolation": "bilinear"}, 224), ({}, 160)],
)
def test_other_configs_match_open_clip(options: dict, size: int) -> None:
    img = _rgb(517, 333)
    reference = open_clip.image_transform(size, is_train=False, **options)
    cfg = PreprocessConfig(size=size, **options)
    assert np.abs(preprocess_image(img, cfg) - reference(img).numpy()).max() <= 1e-5


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 25700, 65535]], dtype=np.uint16)
    path = tmp_path / "levels.png"
    Image.fromarray(values).save(path)
    pixels = np.asarray(load_image(path))
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 1, 100, 255])
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_alpha_is_dropped_like_pillow_convert() -> None:
    rgba = Image.fromarray(RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), np.asarray(rgba.convert("RGB")))
    palette = _palette_with_transparency()
    np.testing.assert_array_equal(np.asarray(to_rgb(palette)), np.asarray(palette.convert("RGB")))


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as img:
        assert img.n_frames == 3
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.getpixel((5, 5)) == (255, 0, 0)


def test_path_bytes_and_image_agree(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    _rgb(300, 200).save(path)
    from_path, from_bytes = load_preprocessed(path), load_preprocessed(path.read_bytes())
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(load_preprocessed(str(path)), from_path)
    np.testing.assert_array_equal(load_preprocessed(load_image(path)), from_path)


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (its data would not fill them)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    _rgb(400, 300).save(buf, "JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _corrupt_png() -> bytes:
    buf = io.BytesIO()
    _rgb(200, 150).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 40
    data[start : start + 200] = bytes(200)
    return bytes(data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "no such file"),
        (b"", r"is empty \(0 bytes\)"),
        (b"just some text, not a picture\n", "not a recognised image format"),
        (_truncated_jpeg(), "corrupt or truncated"),
        (_corrupt_png(), "corrupt or truncated"),
        (_png_header(100_000, 100_000), "too large to decode safely"),
        (_png_header(9000, 9000), "9000x9000 = 81000000 pixels, above the limit of 64000000"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, make: bytes | None, message: str) -> None:
    path = tmp_path / "bad.jpg"
    if make is not None:
        path.write_bytes(make)
    with pytest.raises(ImageLoadError, match=message) as info:
        load_image(path)
    assert isinstance(info.value, DataError) and "\n" not in str(info.value) and str(path) in str(info.value)
    if make:
        with pytest.raises(ImageLoadError, match=message):
            load_image(make)


def test_max_pixels_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _rgb(120, 100).save(path)
    assert MAX_PIXELS == 64_000_000
    assert load_image(path, ImageLimits(max_pixels=12_000)).size == (120, 100)
    with pytest.raises(ImageLoadError, match="120x100 = 12000 pixels, above the limit of 11999"):
        load_image(path, ImageLimits(max_pixels=11_999))


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="a folder, not a regular file"):
        load_image(tmp_path)


def test_config_round_trip_and_open_clip_defaults() -> None:
    cfg = PreprocessConfig()
    assert cfg.mean == open_clip.OPENAI_DATASET_MEAN and cfg.std == open_clip.OPENAI_DATASET_STD
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    custom = PreprocessConfig(size=256, interpolation="bilinear", resize_mode="squash")
    assert PreprocessConfig.from_dict(custom.to_dict()) == custom
    open_clip_style = {"size": (224, 224), "mode": "RGB", "mean": list(cfg.mean), "std": list(cfg.std),
                       "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    assert PreprocessConfig.from_dict(open_clip_style) == cfg


@pytest.mark.parametrize(
    "bad",
    [{"size": 0}, {"interpolation": "lanczos"}, {"resize_mode": "longest"}, {"crop": "random"},
     {"std": (1.0, 0.0, 1.0)}, {"colour": "blue"}, {"size": (224, 160)}, {"mode": "L"}],
)
def test_config_rejects_unsupported_values(bad: dict) -> None:
    with pytest.raises(UsageError):
        PreprocessConfig.from_dict(bad)
