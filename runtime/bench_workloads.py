"""Benchmark workloads: prepared input batches per batch size and one timed call per component.

Components: "e2e" (the Predictor on records: read + decode + preprocess, tokenize, both encoders, head),
"image" (image encoder on preprocessed pixels), "text" (text encoder on ids trimmed to each batch's longest
text, as the Predictor does), "head" (fusion head on embeddings). Inputs are prepared once with the runtime's
own preprocessing and tokenizer, so every backend sees the same arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.backends import Backend
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.preprocess import PreprocessConfig, load_image, preprocess_image
from crisis_tool.runtime.records import Record
from crisis_tool.runtime.text_clean import compose_text
from crisis_tool.runtime.tokenizer import ClipTokenizer

COMPONENT_CHOICES = ("e2e", "image", "text", "head")
GRAPHS_OF = {"e2e": ("image_encoder", "text_encoder", "head"), "image": ("image_encoder",),
             "text": ("text_encoder",), "head": ("head",)}
STAGES = ("decode_preprocess", "tokenize", "image_encoder", "text_encoder", "head")


@dataclass
class InputBatch:
    """One batch of records and the arrays every backend is fed for it."""

    records: list[Record]
    pixels: np.ndarray | None = None  # float32 [B,3,H,W]
    ids: np.ndarray | None = None  # int64 [B,W], W = longest text of the batch
    image_embeds: np.ndarray | None = None
    text_embeds: np.ndarray | None = None
    flops: dict[str, float] = field(default_factory=dict)  # graph -> FLOPs of one call on this batch

    @property
    def size(self) -> int:
        return len(self.records)


def graph_files(bundle: Bundle, name: str, precision: str, component: str) -> list[Path]:
    """Files a backend runs for `component` (variants fall back to fp32 for graphs they lack)."""
    files = []
    for graph in GRAPHS_OF[component]:
        if name == "tensorrt":
            entry = bundle.engine_entry(graph, precision)
            if entry:
                files.append(bundle.root / entry["file"])
        elif name == "onnxruntime":
            has = graph in bundle.manifest["graphs"].get(precision, {})
            files.append(bundle.graph_path(graph, precision if has else "fp32"))
        else:
            files.append(bundle.root / "head.safetensors")
    return files


def torch_model_mb(backend: Backend, component: str) -> float | None:
    """Parameter megabytes of the torch reference (its CLIP weights are not bundle files)."""
    clip, head = getattr(backend, "clip_model", None), getattr(backend, "head", None)
    if clip is None or head is None:
        return None
    visual = sum(p.numel() * p.element_size() for p in clip.visual.parameters())
    total = sum(p.numel() * p.element_size() for p in clip.parameters())
    head_b = sum(p.numel() * p.element_size() for p in head.parameters())
    size = {"e2e": total + head_b, "image": visual, "text": total - visual, "head": head_b}[component]
    return size / 1e6


def text_of(record: Record, text_source: str) -> str:
    """The composed text the Predictor would feed the encoder (tweet alone when llava_text is absent)."""
    source = text_source if record.llava_text else "tweet"
    return compose_text(record.text, record.llava_text, source)


def prepare_batches(bundle: Bundle, batches: list[list[Record]], component: str) -> list[InputBatch]:
    """Decode/preprocess images and tokenize texts (trimmed per batch) with the runtime's code paths."""
    cfg = PreprocessConfig.from_dict(bundle.preprocess_config)
    tokenizer = ClipTokenizer.from_config(bundle.tokenizer_config, bundle.root)
    out = []
    decoded: dict[str, np.ndarray] = {}
    for records in batches:
        batch = InputBatch(records)
        if component in ("e2e", "image", "head"):
            for r in records:
                if r.image not in decoded:
                    decoded[r.image] = preprocess_image(load_image(Path(r.image).read_bytes()), cfg)  # type: ignore[arg-type]
            batch.pixels = np.stack([decoded[r.image] for r in records])  # type: ignore[index]
        if component in ("e2e", "text", "head"):
            batch.ids = tokenizer.tokenize([text_of(r, bundle.text_source) for r in records], trim=True)
        out.append(batch)
    return out


def fill_head_inputs(batches: list[InputBatch], backend: Backend) -> None:
    """Embeddings for the head workload, computed once by one backend and then shared by all rows."""
    for b in batches:
        b.image_embeds = np.asarray(backend.encode_image(b.pixels), dtype=np.float32)
        b.text_embeds = np.asarray(backend.encode_text(b.ids), dtype=np.float32)


def sync_hook(backend: Backend) -> Callable[[], None] | None:
    """Waits for queued GPU work so the clock stops when results exist (no-op on CPU backends).

    Uses `backend.synchronize()` when a backend offers one, else torch.cuda.synchronize for a torch backend
    on CUDA. Cannot be exercised without a GPU.
    """
    sync = getattr(backend, "synchronize", None)
    if callable(sync):
        return sync
    device = getattr(backend, "device", None)
    if getattr(device, "type", None) == "cuda":
        import torch  # only reached on a CUDA torch backend

        return torch.cuda.synchronize
    return None


def transfer_seconds(backend: Backend) -> float | None:
    """Cumulative host<->device copy time a GPU backend reports (`h2d_seconds`), else None."""
    value = getattr(backend, "h2d_seconds", None)
    return float(value) if isinstance(value, (int, float)) else None


def call_once(component: str, backend: Backend, predictor: Any, batch: InputBatch,
              sync: Callable[[], None] | None) -> tuple[float, dict[str, float], Any]:
    """Run one repetition; returns (seconds, stage seconds (e2e only), outputs)."""
    start = time.perf_counter()
    if component == "e2e":
        out = predictor.predict(batch.records)
    elif component == "image":
        out = backend.encode_image(batch.pixels)  # type: ignore[arg-type]
    elif component == "text":
        out = backend.encode_text(batch.ids)  # type: ignore[arg-type]
    else:
        out = backend.decode(batch.image_embeds, batch.text_embeds)  # type: ignore[arg-type]
    if sync is not None:
        sync()
    elapsed = time.perf_counter() - start
    stages = {k: float(predictor.last_timings.get(k, 0.0)) for k in STAGES} if component == "e2e" else {}
    if component == "e2e":
        stages["total"] = elapsed
        bad = next((p.error for p in out if p.error), None)
        if bad:
            raise RuntimeError(f"prediction failed: {bad}")
    return elapsed, stages, out


def parity_outputs(component: str, backend: Backend, batch: InputBatch) -> dict[str, np.ndarray]:
    """The arrays compared between rows: embeddings and/or logits of one batch."""
    if component == "image":
        return {"embeds": np.asarray(backend.encode_image(batch.pixels), np.float32)}  # type: ignore[arg-type]
    if component == "text":
        return {"embeds": np.asarray(backend.encode_text(batch.ids), np.float32)}  # type: ignore[arg-type]
    if component == "head":
        return {"logits": np.asarray(backend.decode(batch.image_embeds, batch.text_embeds)[0], np.float32)}  # type: ignore[arg-type]
    image = np.asarray(backend.encode_image(batch.pixels), np.float32)  # type: ignore[arg-type]
    text = np.asarray(backend.encode_text(batch.ids), np.float32)  # type: ignore[arg-type]
    logits = np.asarray(backend.decode(image, text)[0], np.float32)
    return {"image_embeds": image, "text_embeds": text, "logits": logits}


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.min(np.sum(a64 * b64, axis=1) / np.maximum(norms, 1e-30)))


def compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float | None]:
    """max |diff| of logits (embeddings for encoder rows), min embedding cosine, top-1 agreement."""
    main = "logits" if "logits" in ours else "embeds"
    result: dict[str, float | None] = {
        "max_abs_diff": float(np.max(np.abs(ours[main] - ref[main]))), "cosine": None, "top1_agreement": None}
    embeds = [k for k in ours if k.endswith("embeds")]
    if embeds:
        result["cosine"] = min(_min_cosine(ours[k], ref[k]) for k in embeds)
    if "logits" in ours:
        result["top1_agreement"] = float(np.mean(ours["logits"].argmax(1) == ref["logits"].argmax(1)))
    return result
