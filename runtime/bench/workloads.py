"""Benchmark workloads: prepared input batches per batch size and one timed call per workload.

Workloads: "e2e" (the Predictor on records: read + decode + preprocess, tokenize, both encoders, every head),
"image" (image encoder on preprocessed pixels), "text" (text encoder on ids trimmed to each batch's longest
text, as the Predictor does), "head" (every fusion head of the model spec on embeddings).
Inputs are prepared once with the runtime's own preprocessing, text rule and tokenizer, so every backend
sees the same arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crisis_tool.runtime.backends import Backend
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.file_guard import DEFAULT_MAX_IMAGE_BYTES, read_capped
from crisis_tool.runtime.model_spec import IMAGE_ENCODER, TEXT_ENCODER
from crisis_tool.runtime.parity import max_abs, min_cosine, top1_agreement
from crisis_tool.runtime.predictor import Predictor
from crisis_tool.runtime.preprocess import PreprocessConfig, load_image, preprocess_image
from crisis_tool.runtime.record_text import record_text
from crisis_tool.runtime.records import Record
from crisis_tool.runtime.tokenizer import ClipTokenizer

STAGES = ("decode_preprocess", "tokenize", IMAGE_ENCODER, TEXT_ENCODER, "head")


def workload_graphs(bundle: Bundle, workload: str) -> tuple[str, ...]:
    """The graphs a workload runs, from the bundle's model spec."""
    heads = tuple(h.graph for h in bundle.spec.heads)
    return {"e2e": bundle.spec.graph_names, "image": (IMAGE_ENCODER,), "text": (TEXT_ENCODER,),
            "head": heads}[workload]


@dataclass
class InputBatch:
    """One batch of records and the arrays every backend is fed for it."""

    records: list[Record]
    pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 1, 1), np.float32))  # float32 [B,3,H,W]
    ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # int64 [B,W], W = longest
    image_embeds: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.float32))
    text_embeds: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.float32))
    flops: dict[str, float] = field(default_factory=dict)  # graph -> FLOPs of one call on this batch

    @property
    def size(self) -> int:
        return len(self.records)


def workload_files(backend: Backend, bundle: Bundle, workload: str) -> list[Path]:
    """The files of `backend` that `workload` runs (its graphs' files; all of them for e2e)."""
    files = backend.files()
    if workload == "e2e":
        return files
    wanted = workload_graphs(bundle, workload)
    return [f for f in files if any(f.name.startswith(f"{graph}.") for graph in wanted)]


def prepare_batches(bundle: Bundle, batches: list[list[Record]], workload: str) -> list[InputBatch]:
    """Decode/preprocess images and tokenize texts (trimmed per batch) with the runtime's code paths."""
    cfg = PreprocessConfig.from_dict(bundle.preprocess_config)
    tokenizer = ClipTokenizer.from_config(bundle.tokenizer_config, bundle.root)
    out = []
    decoded: dict[str | bytes, np.ndarray] = {}
    for records in batches:
        batch = InputBatch(records)
        if workload in ("e2e", "image", "head"):
            for r in records:
                if r.image is None:
                    raise UsageError(f"record {r.id}: no image (field 'image')")
                if r.image not in decoded:
                    data = r.image if isinstance(r.image, bytes) else read_capped(r.image, DEFAULT_MAX_IMAGE_BYTES)
                    decoded[r.image] = preprocess_image(load_image(data), cfg)
            batch.pixels = np.stack([decoded[r.image] for r in records if r.image is not None])
        if workload in ("e2e", "text", "head"):
            composed = [record_text(r.text, r.llava_text, bundle.text_source) for r in records]
            empty = next((r for r, c in zip(records, composed, strict=True) if c.empty_input), None)
            if empty is not None:  # the Predictor refuses such a record, so no row may time one
                raise UsageError(f"record {empty.id}: empty text (field 'text')")
            batch.ids = tokenizer.tokenize([c.text for c in composed], trim=True)
        out.append(batch)
    return out


def fill_head_inputs(batches: list[InputBatch], backend: Backend) -> None:
    """Embeddings for the head workload, computed once by one backend and then shared by all rows."""
    for b in batches:
        b.image_embeds = np.asarray(backend.encode_image(b.pixels), dtype=np.float32)
        b.text_embeds = np.asarray(backend.encode_text(b.ids), dtype=np.float32)


def call_once(workload: str, backend: Backend, predictor: Predictor | None, batch: InputBatch
              ) -> tuple[float, dict[str, float]]:
    """Run one repetition, then `backend.synchronize()`; returns (seconds, stage seconds (e2e only))."""
    start = time.perf_counter()
    if workload == "e2e":
        if predictor is None:
            raise RuntimeError("the e2e workload needs a Predictor")
        predictions = predictor.predict(batch.records)
    elif workload == "image":
        backend.encode_image(batch.pixels)
    elif workload == "text":
        backend.encode_text(batch.ids)
    else:
        for task in backend_tasks(backend):
            backend.run_head(batch.image_embeds, batch.text_embeds, task)
    backend.synchronize()
    elapsed = time.perf_counter() - start
    if workload != "e2e" or predictor is None:
        return elapsed, {}
    stages = {k: float(predictor.last_timings.get(k, 0.0)) for k in STAGES}
    stages["total"] = elapsed
    bad = next((p.error for p in predictions if p.error), None)
    if bad:
        raise RuntimeError(f"prediction failed: {bad}")
    return elapsed, stages


def backend_tasks(backend: Backend) -> tuple[str | None, ...]:
    """The tasks of the heads a backend runs (its bundle's spec), or (None,) for a backend without one."""
    spec = getattr(backend, "spec", None)
    return spec.tasks if spec is not None else (None,)


def head_logits(backend: Backend, image: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
    """{"logits:<task>": logits} of every head."""
    return {f"logits:{task}": np.asarray(backend.run_head(image, text, task)[0], np.float32)
            for task in backend_tasks(backend)}


def parity_outputs(workload: str, backend: Backend, batch: InputBatch) -> dict[str, np.ndarray]:
    """The arrays compared between rows: embeddings and/or every head's logits of one batch."""
    if workload == "image":
        return {"embeds": np.asarray(backend.encode_image(batch.pixels), np.float32)}
    if workload == "text":
        return {"embeds": np.asarray(backend.encode_text(batch.ids), np.float32)}
    if workload == "head":
        return head_logits(backend, batch.image_embeds, batch.text_embeds)
    image = np.asarray(backend.encode_image(batch.pixels), np.float32)
    text = np.asarray(backend.encode_text(batch.ids), np.float32)
    return {"image_embeds": image, "text_embeds": text, **head_logits(backend, image, text)}


def compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float | None]:
    """max |diff| of logits (embeddings for encoder rows), min embedding cosine, top-1 agreement (worst head)."""
    logits = [k for k in ours if k.startswith("logits") and k in ref]
    main = logits or ["embeds"]
    result: dict[str, float | None] = {
        "max_abs_diff": max(max_abs(ours[k], ref[k]) for k in main), "cosine": None, "top1_agreement": None}
    embeds = [k for k in ours if k.endswith("embeds")]
    if embeds:
        result["cosine"] = min(min_cosine(ours[k], ref[k]) for k in embeds)
    if logits:
        result["top1_agreement"] = min(top1_agreement(ours[k], ref[k]) for k in logits)
    return result
