"""Fast vs exact image decoding: per-core speed and how close the model input (and a tiny model's embedding) stay.

    python benchmarks/decode_speed.py [--photos /work/shared/data/photos] [--repeats 5]

The real photos are resized to tweet-photo sizes (600x400 to 2048x1536) and re-encoded as JPEG (quality 90) in
a temporary folder. Each decode path (`load_preprocessed(bytes, decode=...)`) runs on one thread, interleaved,
best of `--repeats`; the speedup is exact time / fast time. The model-input cosine compares the normalised
[3, 224, 224] tensors; the embedding cosine feeds both through a small random ViT image encoder (numpy, seeded)
to show the gap after a network, not only on pixels.
"""

from __future__ import annotations

import argparse
import io
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from crisis_tool.runtime.preprocess import load_preprocessed

SIZES = ((600, 400), (1024, 768), (1200, 900), (1600, 1200), (2048, 1536))


def tweet_jpegs(photos: Path) -> list[tuple[str, bytes]]:
    """Every photo at every tweet size, as JPEG bytes (quality 90, 4:2:0 as phones and Twitter write them)."""
    out = []
    for path in sorted(p for p in photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        for width, height in SIZES:
            buf = io.BytesIO()
            rgb.resize((width, height), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
            out.append((f"{path.stem}@{width}x{height}", buf.getvalue()))
    return out


def best_time(data: bytes, decode: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        load_preprocessed(data, decode=decode)
        best = min(best, time.perf_counter() - start)
    return best


def tiny_vit(seed: int = 0, width: int = 64, patch: int = 32, layers: int = 2):
    """A random ViT image encoder in numpy: patch embedding, `layers` pre-norm attention+MLP blocks, mean pool."""
    rng = np.random.default_rng(seed)
    w_patch = rng.normal(0, 0.02, (3 * patch * patch, width)).astype(np.float32)
    blocks = [[rng.normal(0, width**-0.5, (width, width)).astype(np.float32) for _ in range(6)]
              for _ in range(layers)]

    def norm(x: np.ndarray) -> np.ndarray:
        return (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-5)

    def encode(pixels: np.ndarray) -> np.ndarray:
        c, h, w = pixels.shape
        grid = pixels.reshape(c, h // patch, patch, w // patch, patch).transpose(1, 3, 0, 2, 4)
        x = grid.reshape(-1, c * patch * patch) @ w_patch
        for wq, wk, wv, wo, w1, w2 in blocks:
            y = norm(x)
            scores = (y @ wq) @ (y @ wk).T / np.sqrt(width)
            attn = np.exp(scores - scores.max(-1, keepdims=True))
            x = x + (attn / attn.sum(-1, keepdims=True)) @ (y @ wv) @ wo
            x = x + np.maximum(norm(x) @ w1, 0) @ w2
        return x.mean(0)

    return encode


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("/work/shared/data/photos"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    encoder = tiny_vit()
    rows = []
    print(f"machine: {platform.processor() or platform.machine()}, one thread per decode, best of {args.repeats}")
    print(f"{'image':28} {'exact ms':>9} {'fast ms':>8} {'speedup':>8} {'input cos':>10} {'max|d|':>7} "
          f"{'embed cos':>10}")
    for name, data in tweet_jpegs(args.photos):
        exact_s, fast_s = best_time(data, "exact", args.repeats), best_time(data, "fast", args.repeats)
        exact, fast = load_preprocessed(data, decode="exact"), load_preprocessed(data, decode="fast")
        row = (exact_s, fast_s, cosine(exact, fast), float(np.abs(exact - fast).max()),
               cosine(encoder(exact), encoder(fast)))
        rows.append(row)
        print(f"{name:28} {row[0] * 1e3:9.2f} {row[1] * 1e3:8.2f} {row[0] / row[1]:7.2f}x {row[2]:10.6f} "
              f"{row[3]:7.3f} {row[4]:10.6f}")
    total_exact, total_fast = sum(r[0] for r in rows), sum(r[1] for r in rows)
    print(f"all {len(rows)} images: exact {total_exact * 1e3:.1f} ms, fast {total_fast * 1e3:.1f} ms, "
          f"speedup {total_exact / total_fast:.2f}x per core; model-input cosine min {min(r[2] for r in rows):.6f}"
          f" (mean {np.mean([r[2] for r in rows]):.6f}), max abs diff {max(r[3] for r in rows):.3f}; "
          f"tiny-model embedding cosine min {min(r[4] for r in rows):.6f}")


if __name__ == "__main__":
    main()
