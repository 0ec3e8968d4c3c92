"""Benchmark inputs: generated image+text records with real-world sizes, or real records from a file.

Images: JPEG files of varied sizes (phone photos to thumbnails) written to a folder, so that decoding is real.
Texts: lengths (in CLIP tokens, sot and eot included) drawn from the distribution measured on the real
CrisisMMD tweets, not always the 77-token maximum.

Measured (11,725 distinct tweet_text values of the CrisisMMD v2.0 settingA split TSVs,
runtime ClipTokenizer, non-zero ids per row):
* after `clean_tweet` (what the Predictor feeds the encoder): median 18, p10 12, p90 27, p99 38, max 77
  (4 tweets, 0.03%, reach 77). Per TSV row (19,505 rows, duplicates kept): median 18, p90 27, p99 39.
* raw, uncleaned tweets (URLs kept, which cost ~10-20 tokens each): median 40, p90 48, p99 58. The often
  quoted "median ~40, p90 ~48" is this raw figure; the runtime cleans first, so the histogram below is used.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.records import Record, RecordError, read_records

# Histogram of cleaned-tweet token lengths (length: count), measured as described above.
TWEET_TOKEN_LENGTHS: dict[int, int] = {
    5: 8, 6: 32, 7: 65, 8: 108, 9: 204, 10: 297, 11: 439, 12: 571, 13: 672, 14: 705, 15: 777, 16: 771,
    17: 880, 18: 788, 19: 786, 20: 684, 21: 556, 22: 502, 23: 450, 24: 402, 25: 398, 26: 308, 27: 259,
    28: 233, 29: 150, 30: 112, 31: 113, 32: 89, 33: 75, 34: 53, 35: 36, 36: 35, 37: 35, 38: 22, 39: 16,
    40: 15, 41: 6, 42: 14, 43: 4, 44: 6, 45: 8, 46: 4, 47: 4, 48: 4, 49: 4, 50: 3, 51: 1, 52: 2, 55: 2,
    56: 1, 58: 1, 61: 1, 64: 3, 65: 2, 68: 2, 69: 1, 70: 1, 75: 1, 77: 4,
}
# Each is one CLIP BPE token followed by a space (checked in tests/runtime/test_bench.py).
_WORDS = (
    "the flood water fire help people road house city storm rain wind news power rescue team after near from "
    "with more today still need food safe home family damage hurricane earthquake relief victims red cross "
    "donate shelter bridge river street school hospital county state emergency crews police missing injured "
    "dead killed homes destroyed area local update live video photo now our your please stay all this that"
).split()
# Typical photo sizes (width, height): phone landscape/portrait, square, web thumbnails.
IMAGE_SIZES = ((1024, 768), (768, 1024), (800, 800), (1280, 720), (640, 480), (480, 360), (1600, 1200))


def sample_text_lengths(n: int, rng: np.random.Generator, fixed: int | None = None) -> np.ndarray:
    """`n` token lengths (sot+eot included): from the tweet histogram, or all `fixed`."""
    if fixed is not None:
        return np.full(n, int(fixed), dtype=np.int64)
    lengths = np.array(list(TWEET_TOKEN_LENGTHS), dtype=np.int64)
    counts = np.array(list(TWEET_TOKEN_LENGTHS.values()), dtype=np.float64)
    return rng.choice(lengths, size=n, p=counts / counts.sum())


def make_text(tokens: int, rng: np.random.Generator) -> str:
    """A tweet-like text of exactly `tokens` CLIP tokens including sot and eot (2 <= tokens <= 77)."""
    words = rng.choice(_WORDS, size=max(0, int(tokens) - 2))
    return " ".join(str(w) for w in words)


def make_jpeg(size: tuple[int, int], rng: np.random.Generator, quality: int = 85) -> bytes:
    """A photo-like JPEG: smooth colour gradients plus noise (compresses like a real photo, decodes fully)."""
    w, h = size
    small = rng.integers(0, 256, size=(max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16)
    noise = rng.integers(-12, 13, size=base.shape, dtype=np.int16)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def generate_records(n: int, folder: str | Path, seed: int = 0, text_tokens: int | None = None) -> list[Record]:
    """`n` records with JPEGs of varied sizes written under `folder` and texts of realistic length.

    `text_tokens` fixes every text at that many tokens (e.g. 77, the unpadded worst case).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = sample_text_lengths(n, rng, text_tokens)
    records = []
    for i in range(n):
        path = folder / f"bench_{seed}_{i:05d}.jpg"
        if not path.is_file():
            path.write_bytes(make_jpeg(IMAGE_SIZES[i % len(IMAGE_SIZES)], rng))
        records.append(Record(f"bench-{i}", make_text(int(lengths[i]), rng), str(path), None, i + 1, "generated"))
    return records


def load_records(source: str | Path, image_root: str | Path | None = None, limit: int | None = None
                 ) -> list[Record]:
    """Usable records (an image and a non-empty text) of a JSONL/TSV file or image folder; UsageError if none.

    A TSV without `image_root` resolves images against the TSV's folder.
    """
    path = Path(source)
    if path.suffix.lower() == ".tsv" and image_root is None:
        image_root = path.resolve().parent
    records: list[Record] = []
    for item in read_records(path, image_root):
        if isinstance(item, RecordError) or not item.image or not (item.text or "").strip():
            continue
        if not isinstance(item.image, str) or not Path(item.image).is_file():
            continue
        records.append(item)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise UsageError(f"--records {source}: no usable records (each needs a readable image and a text)")
    return records


def batches_of(records: list[Record], batch_size: int, count: int) -> list[list[Record]]:
    """`count` batches of `batch_size` records, cycling through `records` (distinct where possible)."""
    out = []
    for b in range(count):
        start = b * batch_size
        out.append([records[(start + i) % len(records)] for i in range(batch_size)])
    return out
