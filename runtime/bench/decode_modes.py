"""Bench's image decode modes: what `--decode fast` costs in accuracy and saves in time, on the same images.

* `decode_cosines`: per "fast" row, the image embeddings of its backend on fast-decoded pixels against the
  same backend on exactly decoded pixels of the same images (min cosine; 1.0 = no change).
* `decode_speed`: exact and fast decode + preprocess per image on one thread (one core), interleaved image by
  image, best of `rounds`, so the ratio is measured side by side.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from crisis_tool.runtime.bench.rows import Row
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.file_guard import DEFAULT_MAX_IMAGE_BYTES, read_capped
from crisis_tool.runtime.parity import min_cosine
from crisis_tool.runtime.preprocess import PreprocessConfig, load_preprocessed
from crisis_tool.runtime.records import Record

MAX_IMAGES = 64


def distinct_images(records: Iterable[Record], limit: int = MAX_IMAGES) -> list[bytes]:
    """The encoded bytes of up to `limit` distinct image paths of `records`, in order."""
    paths = list(dict.fromkeys(r.image for r in records if isinstance(r.image, str)))[:limit]
    return [read_capped(p, DEFAULT_MAX_IMAGE_BYTES) for p in paths]


def preprocessed(images: list[bytes], cfg: PreprocessConfig, mode: str) -> np.ndarray:
    """float32 [N,3,S,S] of `images` decoded in `mode`."""
    return np.stack([load_preprocessed(data, cfg, decode=mode) for data in images])


def decode_cosines(results: list[dict[str, Any]], rows: list[Row], images: list[bytes], bundle: Bundle) -> None:
    """`decode_cosine` of every ok "fast" row: its image embeddings, fast against exact decoding."""
    fast_rows = [(res, row) for res, row in zip(results, rows, strict=True) if row.decode == "fast"]
    for res, _ in fast_rows:
        res["decode_cosine"] = None
    if not fast_rows or not images:
        return
    cfg = PreprocessConfig.from_dict(bundle.preprocess_config)
    exact, fast = preprocessed(images, cfg, "exact"), preprocessed(images, cfg, "fast")
    for res, row in fast_rows:
        backend = row.subject.backend
        if res["status"] != "ok" or backend is None:
            continue
        batch = max(1, min(row.batch_size, backend.engine_batch_limit or row.batch_size))
        ours, ref = [], []
        for start in range(0, len(images), batch):
            ours.append(np.asarray(backend.encode_image(fast[start:start + batch]), np.float32))
            ref.append(np.asarray(backend.encode_image(exact[start:start + batch]), np.float32))
        res["decode_cosine"] = min_cosine(np.concatenate(ours), np.concatenate(ref))


def decode_speed(images: list[bytes], bundle: Bundle, rounds: int = 5) -> dict[str, Any]:
    """ms per image of exact and fast decode + preprocess on this thread, and their ratio (fast speedup)."""
    cfg = PreprocessConfig.from_dict(bundle.preprocess_config)
    best = {"exact": [float("inf")] * len(images), "fast": [float("inf")] * len(images)}
    for rnd in range(max(1, rounds)):
        for i, data in enumerate(images):
            for mode in ("exact", "fast") if (rnd + i) % 2 == 0 else ("fast", "exact"):  # neither always first
                start = time.perf_counter()
                load_preprocessed(data, cfg, decode=mode)
                best[mode][i] = min(best[mode][i], time.perf_counter() - start)
    exact, fast = sum(best["exact"]), sum(best["fast"])
    return {
        "images": len(images), "rounds": rounds,
        "exact_ms_per_image": round(1e3 * exact / len(images), 3) if images else None,
        "fast_ms_per_image": round(1e3 * fast / len(images), 3) if images else None,
        "fast_speedup": round(exact / fast, 3) if images and fast > 0 else None,
    }
