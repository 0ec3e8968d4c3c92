"""The Predictor with images given as bytes, untrusted files (FIFOs, devices, large files) and its options."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.image_decode import ImageLimits
from crisis_tool.runtime.predictor import Predictor
from crisis_tool.runtime.records import Record

TEXT = "Bridge washed out on Route 9"


def _jpeg(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1)
    pixels = pixels + rng.integers(0, 30, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    with Predictor.from_bundle(tiny_bundle, batch_size=4, cache_size=0) as p:
        yield p


def test_bytes_image_equals_path_image(predictor: Predictor, tmp_path: Path) -> None:
    data = _jpeg(320, 240)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    by_path, by_bytes = predictor.predict([Record("p", TEXT, str(path)), Record("b", TEXT, data)])
    assert by_path.error is None and by_bytes.error is None
    assert by_bytes.label == by_path.label
    assert by_bytes.probs == pytest.approx(by_path.probs, abs=1e-6)


def test_bad_bytes_name_the_record_and_field_not_a_path(predictor: Predictor) -> None:
    junk = b"not an image at all" * 10
    records = [Record("empty", TEXT, b""), Record("junk", TEXT, junk), Record("ok", TEXT, _jpeg(64, 64))]
    preds = predictor.predict(records)
    assert [p.id for p in preds] == ["empty", "junk", "ok"]
    assert preds[0].error == "record empty: bad image (field 'image', 0 bytes of image data): empty (0 bytes)"
    assert preds[1].error.startswith(f"record junk: bad image (field 'image', {len(junk)} bytes of image data): ")
    assert "not a recognised image format" in preds[1].error
    assert preds[2].error is None


def test_byte_limit_applies_to_bytes_and_files(tiny_bundle: Path, tmp_path: Path) -> None:
    big, small = _jpeg(400, 300, seed=1), _jpeg(40, 30, seed=2)
    path = tmp_path / "big.jpg"
    path.write_bytes(big)
    limit = len(big) - 1
    assert len(small) <= limit
    with Predictor.from_bundle(tiny_bundle, image_limits=ImageLimits(max_bytes=limit)) as p:
        preds = p.predict([Record("bytes", TEXT, big), Record("file", TEXT, str(path)), Record("ok", TEXT, small)])
    assert preds[0].error.endswith(f"{len(big)} bytes, above the limit of {limit} bytes")
    assert preds[1].error.endswith(f"{len(big)} bytes, above the limit of {limit} bytes")
    assert str(path) in preds[1].error and preds[2].error is None


def test_special_files_are_each_a_record_error(predictor: Predictor, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    dangling = tmp_path / "gone.jpg"
    dangling.symlink_to(tmp_path / "nowhere.jpg")
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg(80, 60))
    records = [Record(n, TEXT, str(p)) for n, p in
               (("fifo", fifo), ("zero", zero), ("dangling", dangling), ("folder", tmp_path), ("good", good))]
    preds = predictor.predict(records)  # a FIFO with no writer would block a plain open() forever
    assert [p.id for p in preds] == ["fifo", "zero", "dangling", "folder", "good"]
    assert preds[0].error.endswith("a FIFO, not a regular file")
    assert preds[1].error.endswith("a character device, not a regular file")
    assert preds[2].error.endswith("no such file")
    assert preds[3].error.endswith("a folder, not a regular file")
    assert preds[4].error is None


def test_decode_option_is_checked_and_fast_is_close(tiny_bundle: Path) -> None:
    with pytest.raises(UsageError, match="decode mode 'quick'"):
        Predictor.from_bundle(tiny_bundle, decode="quick")
    record = Record("r", TEXT, _jpeg(2048, 1536, seed=3))
    with Predictor.from_bundle(tiny_bundle, decode="exact") as exact, \
            Predictor.from_bundle(tiny_bundle, decode="fast") as fast:
        a, b = exact.predict([record])[0], fast.predict([record])[0]
    assert a.error is None and b.error is None
    assert b.probs == pytest.approx(a.probs, abs=0.02)
