"""The fast decode (JPEG DCT scaling + Pillow's reducing gap) stays within the model-input cosine gate of 0.9999
against the exact path on the shared real photos re-encoded at tweet sizes; exact stays exact."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crisis_tool.runtime import preprocess
from crisis_tool.runtime.preprocess import PreprocessConfig, load_preprocessed, preprocess_image

PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "photos"
SIZES = ((680, 510), (1200, 900), (2048, 1536))
GATE = 0.9999


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def tweet_jpegs() -> list[bytes]:
    photos = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        pytest.skip(f"no shared photos at {PHOTOS}")
    out = []
    for path in photos:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        for size in SIZES:
            buf = io.BytesIO()
            rgb.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=85)
            out.append(buf.getvalue())
    return out


def test_fast_decode_passes_the_model_input_gate(tweet_jpegs):
    cfg = PreprocessConfig()
    cosines = [_cosine(load_preprocessed(d, cfg, decode="fast"), load_preprocessed(d, cfg, decode="exact"))
               for d in tweet_jpegs]
    assert min(cosines) >= GATE, cosines
    assert min(cosines) < 1.0  # the fast path really differs (it is not the exact one under another name)


def test_fast_decode_uses_the_reducing_gap_and_exact_does_not(monkeypatch):
    seen = []
    real = preprocess.preprocess_image

    def spy(img, cfg=None, reducing_gap=None):
        seen.append(reducing_gap)
        return real(img, cfg, reducing_gap)

    monkeypatch.setattr(preprocess, "preprocess_image", spy)
    buf = io.BytesIO()
    Image.new("RGB", (900, 700), (10, 200, 30)).save(buf, "PNG")
    load_preprocessed(buf.getvalue(), decode="fast")
    load_preprocessed(buf.getvalue(), decode="exact")
    assert seen == [preprocess.FAST_REDUCING_GAP, None]


def test_reducing_gap_none_is_the_exact_transform():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1400, 3), dtype=np.uint8))
    np.testing.assert_array_equal(preprocess_image(img), preprocess_image(img, reducing_gap=None))
    assert not np.array_equal(preprocess_image(img), preprocess_image(img, reducing_gap=1.5))
