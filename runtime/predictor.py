"""Batched, torch-free prediction over records: one `Prediction` per input record, in input order.

Every selected head (one per task of the bundle's model spec) runs on the same embeddings: the encoders run
once per post whatever the number of tasks. A head's confidence is calibrated (softmax of logits / the
head's temperature) and, where the bundle stores a review threshold, `needs_review` is set below it.

Per batch (up to `batch_size` records): image files are read, hashed (sha256 of the bytes), decoded and
preprocessed in a small thread pool while the previous batch runs on the backend; texts are composed
(`record_text`, the bundle's text source), tokenized with each batch trimmed to its longest sequence and
encoded shortest-first; identical images and texts are encoded once (LRU caches of embeddings keyed by
sha256); the head runs once per batch.

Records that cannot be classified become error predictions, never exceptions:
* no image (None or "")           -> "record X: no image (field 'image')" (the head needs both modalities)
* `Record.image` is a path (str) or the image's encoded bytes; both are held to `image_limits` (encoded size,
  pixels, aspect ratio, decoded bytes; see `image_decode`) and hashed the same way; an error names a path as
  itself and bytes as "N bytes of image data".
* text None/empty/whitespace      -> "record X: empty text (field 'text')" (a tweet that cleans to "", e.g.
  only a URL, is still classified); a text longer than the context length is truncated.
* unreadable/corrupt/oversized image -> "record X: bad image (field 'image', PATH): reason"
A bundle trained on LLaVA text ("llava", "tweet+llava") given records without `llava_text` uses the cleaned
tweet alone, as training does (`record_text`), and warns once per Predictor that the accuracy of this mismatch
is unknown.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.backends import Backend, create_backend
from crisis_tool.runtime.batching import EmbeddingCache, RecordQueue
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.file_guard import UnsafeFileError, read_capped
from crisis_tool.runtime.image_decode import ImageLimits, check_decode_mode
from crisis_tool.runtime.prediction import Prediction, TaskPrediction, calibrated_probs, task_prediction
from crisis_tool.runtime.preprocess import PreprocessConfig, decode_and_preprocess
from crisis_tool.runtime.record_text import record_text
from crisis_tool.runtime.records import Record, RecordError
from crisis_tool.runtime.text_clean import MAX_TEXT_CHARS
from crisis_tool.runtime.tokenizer import ClipTokenizer
from crisis_tool.runtime.triage.grouping import NearDuplicateGrouper
from crisis_tool.runtime.triage.image_hash import image_hash_of
from crisis_tool.runtime.triage.text_key import text_key
from crisis_tool.runtime.word_weights import WORD_CACHE_SIZE, Words, padded_words, top_words

__all__ = ["TIMING_KEYS", "Prediction", "Predictor", "TaskPrediction", "calibrated_probs", "task_prediction"]

log = logging.getLogger(__name__)

TIMING_KEYS = ("decode_preprocess", "tokenize", "image_encoder", "text_encoder", "head", "total")


@dataclass
class _Batch:
    """One batch in flight: its items, per-record image futures and decoded images by sha256."""

    items: list[Record | RecordError]
    futures: dict[int, Future] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    cached: dict[str, np.ndarray] = field(default_factory=dict)
    hashes: dict[str, int] = field(default_factory=dict)  # sha256 -> near-duplicate image hash (pHash)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Predictor:
    """Classifies records with a bundle's three components on any `Backend`; safe to share between threads."""

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        batch_size: int = 32,
        cache_size: int = 4096,
        workers: int | None = None,
        image_limits: ImageLimits | None = None,
        decode: str = "exact",
        tasks: str | Sequence[str] | None = None,
        groups: bool = True,
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.batch_size = max(1, int(batch_size))  # records per batch
        self.spec = bundle.spec
        self.heads = self.spec.select(tasks)
        self.tasks = tuple(h.task for h in self.heads)
        self.labels = list(self.heads[0].labels)
        self.text_source = bundle.text_source
        self.tokenizer = ClipTokenizer.from_config(bundle.tokenizer_config, bundle.root)
        self.preprocess = PreprocessConfig.from_dict(bundle.preprocess_config)
        self.image_limits = image_limits or ImageLimits()
        self.decode_mode = check_decode_mode(decode)
        self.image_cache = EmbeddingCache(cache_size)
        self.groups = bool(groups)  # near-duplicate groups (pHash of each image, normalised text)
        self.image_hashes = EmbeddingCache(cache_size)
        self.text_cache = EmbeddingCache(cache_size)
        self.weighs_words = any(h.explain_tokens for h in self.heads)  # --explain heads that weigh words
        self.word_cache: EmbeddingCache = EmbeddingCache(min(cache_size, WORD_CACHE_SIZE) if self.weighs_words else 0)
        self._pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1),
                                        thread_name_prefix="crisis-decode")
        self._lock = threading.Lock()
        self._warned_llava = False
        self.cold_start_s: float | None = None
        self.last_timings: dict[str, float] = dict.fromkeys(TIMING_KEYS, 0.0)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        backend: str = "onnxruntime",
        batch_size: int = 32,
        precision: str | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
        verify: bool = True,
        backend_options: Mapping[str, Any] | None = None,
        pubkey: str | Path | None = None,
        **options: Any,
    ) -> Predictor:
        """Load (and verify) a bundle and its backend; `cold_start_s` records how long that took.

        `backend_options` go to the backend as keyword options (e.g. {"device": "GPU"} for openvino); None
        values count as not given, and an option the backend does not take is a UsageError. `options` go to
        the Predictor (`image_limits`, `decode`, ...). With `pubkey` the bundle must be signed by that key.
        """
        start = time.perf_counter()
        bundle = Bundle.load(path, verify=verify, pubkey=pubkey)
        bundle.spec.select(options.get("tasks"))  # an unknown --tasks is a usage error before any session loads
        engine = create_backend(backend, bundle, precision=precision, providers=providers, threads=threads,
                                **dict(backend_options or {}))
        limit = engine.engine_batch_limit  # e.g. a TensorRT engine's fixed profile
        try:
            predictor = cls(bundle, engine, batch_size=min(batch_size, limit) if limit else batch_size, **options)
        except BaseException:
            engine.close()  # a GPU context or session must not outlive a Predictor that failed to build
            raise
        predictor.cold_start_s = time.perf_counter() - start
        for warning in predictor.warnings:
            log.warning("%s", warning)
        return predictor

    @property
    def warnings(self) -> list[str]:
        """What an operator must know about this bundle's answers (shown once by the CLI and in /v1/info)."""
        out = []
        encoders = self.bundle.manifest.encoders
        if self.bundle.manifest.random_encoders:
            out.append(f"bundle {self.bundle.root} was exported with RANDOM encoder weights "
                       f"({encoders.get('model')}, --pretrained none): its answers are meaningless")
        return out  # a llava bundle given records without captions warns when it meets them (`_warn_llava`)

    # ---------------------------------------------------------------- public API
    def predict(self, records: Iterable[Record | RecordError]) -> list[Prediction]:
        """One Prediction per record, in order."""
        items = list(records)
        chunks = iter([items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)])
        return list(self._pipeline(lambda block: next(chunks, None)))

    def predict_stream(
        self, records: Iterable[Record | RecordError], linger_s: float = 0.05
    ) -> Iterator[Prediction]:
        """Predictions as batches complete, in order, with bounded memory (suits stdin).

        A batch closes at `batch_size` records, or `linger_s` after its first record when input pauses, so a
        slow producer still gets its answers promptly.
        """
        stream = RecordQueue(records, 2 * self.batch_size)
        try:
            yield from self._pipeline(lambda block: stream.take(self.batch_size, block, linger_s))
        finally:
            stream.stop()

    def close(self, wait: bool = True) -> None:
        """Stop the decode pool and the backend; `wait=False` (after an error or Ctrl-C) abandons running
        decodes instead of waiting for them."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(wait=exc_type is None)

    # ---------------------------------------------------------------- pipeline
    def _pipeline(self, take: Callable[[bool], list[Record | RecordError] | None]) -> Iterator[Prediction]:
        """Decode batch k+1 in the pool while batch k runs on the backend.

        `take(block)` returns the next batch, [] when none is ready yet (only asked with block=False), or None
        at the end of the input.
        """
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        start = time.perf_counter()
        pending: _Batch | None = None
        grouper = NearDuplicateGrouper() if self.groups else None  # one streaming pass per call
        try:
            while (items := take(pending is None)) is not None:
                if not items:  # input paused: answer what we have
                    yield from self._finish(pending, timings, grouper)  # type: ignore[arg-type]
                    pending = None
                    continue
                nxt = self._submit(items, timings)
                if pending is not None:
                    yield from self._finish(pending, timings, grouper)
                pending = nxt
            if pending is not None:
                yield from self._finish(pending, timings, grouper)
                pending = None
        finally:
            if pending is not None:
                for future in pending.futures.values():
                    future.cancel()
            timings["total"] = time.perf_counter() - start
            self.last_timings = timings

    def _submit(self, items: list[Record | RecordError], timings: dict[str, float]) -> _Batch:
        batch = _Batch(items)
        for i, item in enumerate(items):
            if isinstance(item, Record) and item.image is not None and _has_image(item):
                batch.futures[i] = self._pool.submit(self._load_image, item.image, batch, timings)
        return batch

    def _load_image(
        self, source: str | bytes, batch: _Batch, timings: dict[str, float]
    ) -> tuple[str | None, str | None]:
        """(sha256, None) once the image is decoded or cached, or (None, reason)."""
        start = time.perf_counter()
        max_bytes = self.image_limits.max_bytes
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if not data:
                return None, "empty (0 bytes)"
            if len(data) > max_bytes:
                return None, f"{len(data)} bytes, above the limit of {max_bytes} bytes"
        else:
            try:
                data = read_capped(source, max_bytes)
            except UnsafeFileError as exc:
                return None, exc.reason
            if not data:
                return None, "empty (0 bytes)"
        sha = hashlib.sha256(data).hexdigest()
        cached = self.image_cache.get(sha)
        known_hash = self.image_hashes.get(sha) if self.groups else None
        if cached is not None and self.groups and known_hash is None:
            cached = None  # the embedding is cached but not its near-duplicate hash: decode once more
        with batch.lock:
            if known_hash is not None:
                batch.hashes[sha] = int(known_hash)
            if cached is not None:
                batch.cached[sha] = cached
            if sha in batch.claimed or cached is not None:
                return sha, None
            batch.claimed.add(sha)
        try:
            image, array = decode_and_preprocess(data, self.preprocess, self.image_limits, self.decode_mode)
            value = image_hash_of(image) if self.groups else None
            with batch.lock:
                batch.arrays[sha] = array
                if value is not None:
                    batch.hashes[sha] = value
            if value is not None:
                self.image_hashes.put(sha, np.uint64(value))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this record's error
            with batch.lock:
                batch.failures[sha] = str(exc) or type(exc).__name__
        finally:
            with self._lock:
                timings["decode_preprocess"] += time.perf_counter() - start
        return sha, None

    def _text_of(self, record: Record) -> str | None:
        """The record's text by the one rule (`record_text`), or None when the record has no usable text."""
        composed = record_text(record.text, record.llava_text, self.text_source)
        if composed.caption_missing:
            self._warn_llava()
        return None if composed.empty_input else composed.text

    def _warn_llava(self) -> None:
        with self._lock:
            if self._warned_llava:
                return
            self._warned_llava = True
        log.warning(
            "bundle text source is %r but some records have no llava_text: they use the tweet alone; the "
            "accuracy of this mismatch is unknown", self.text_source,
        )

    def _finish(self, batch: _Batch, timings: dict[str, float], grouper: NearDuplicateGrouper | None = None
                ) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(batch.items)
        texts: dict[int, str] = {}
        for i, item in enumerate(batch.items):
            if isinstance(item, Record):
                _warn_if_cut(item)
            if isinstance(item, Record) and (text := self._text_of(item)) is not None:
                texts[i] = text
        # Encode the texts while the pool is still decoding this batch's images.
        wanted = [i for i in texts if _has_image(batch.items[i])]
        words: list[Words] = []
        encoded: list[np.ndarray] = (list(self._text_embeddings([texts[i] for i in wanted], timings, words))
                                     if wanted else [])
        text_rows = dict(zip(wanted, encoded, strict=True))
        word_rows = dict(zip(wanted, words, strict=True)) if self.weighs_words else {}
        loaded = {i: future.result() for i, future in batch.futures.items()}  # all decodes done
        shas: dict[int, str] = {}
        for i, item in enumerate(batch.items):
            if isinstance(item, RecordError):
                out[i] = Prediction.failed(item.id, item.error)
                continue
            problems = []
            if not _has_image(item):
                problems.append("no image (field 'image')")
            if i not in texts:
                problems.append("empty text (field 'text')")
            if i in loaded:
                sha, reason = loaded[i]
                reason = reason or (batch.failures.get(sha) if sha else None)
                if reason:
                    problems.append(f"bad image (field 'image', {_image_label(item.image)}): {reason}")
                else:
                    shas[i] = sha
            if problems:
                out[i] = Prediction.failed(item.id, f"record {item.id}: " + "; ".join(problems))
        ok = [i for i in text_rows if i in shas]
        if ok:
            image_embeds = self._image_embeddings([shas[i] for i in ok], batch, timings)
            text_embeds = np.stack([text_rows[i] for i in ok])
            answers: list[dict[str, TaskPrediction]] = [{} for _ in ok]
            for head in self.heads:
                start = time.perf_counter()
                share, top = None, None
                if head.explain:
                    extra = padded_words([word_rows[i] for i in ok]) if head.explain_tokens else None
                    outputs = self.backend.run_head_outputs(image_embeds, text_embeds, head.task, extra)
                    logits, probs, share = outputs["logits"], outputs["probs"], outputs["modality_share"]
                    if head.explain_tokens:
                        top = [top_words(word_rows[i], outputs["token_weights"][row], self.tokenizer)
                               for row, i in enumerate(ok)]
                else:
                    logits, probs = self.backend.run_head(image_embeds, text_embeds, head.task)
                self._add(timings, "head", start)
                for row in range(len(ok)):
                    answers[row][head.task] = task_prediction(head, logits[row], probs[row],
                                                              None if share is None else share[row],
                                                              None if top is None else top[row])
            for row, i in enumerate(ok):
                out[i] = Prediction(batch.items[i].id, answers[row])
        if grouper is not None:
            _assign_groups(out, batch, shas, grouper)  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    def _add(self, timings: dict[str, float], key: str, start: float) -> None:
        with self._lock:
            timings[key] += time.perf_counter() - start

    def _image_embeddings(self, shas: list[str], batch: _Batch, timings: dict[str, float]) -> np.ndarray:
        found: dict[str, np.ndarray | None] = {sha: batch.cached.get(sha) for sha in dict.fromkeys(shas)}
        missing = [sha for sha, emb in found.items() if emb is None]
        for start_row in range(0, len(missing), self.batch_size):
            chunk = missing[start_row : start_row + self.batch_size]
            start = time.perf_counter()
            embeds = self.backend.encode_image(np.stack([batch.arrays[sha] for sha in chunk]))
            self._add(timings, "image_encoder", start)
            for sha, emb in zip(chunk, embeds, strict=True):
                found[sha] = emb
                self.image_cache.put(sha, emb)
        return _stack_found(found, shas)

    def _text_embeddings(self, texts: list[str], timings: dict[str, float], words: list[Words] | None = None
                         ) -> np.ndarray:
        """Pooled text embeddings [N, D] of `texts`; for a bundle whose heads weigh words, each text's `Words`
        are appended to `words` (encoded with the text, cached beside it)."""
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        found: dict[str, np.ndarray | None] = {k: self.text_cache.get(k) for k in dict.fromkeys(keys)}
        found_words: dict[str, Any] = {k: self.word_cache.get(k) for k in found} if self.weighs_words else {}
        missing = {k: t for k, t in zip(keys, texts, strict=True)
                   if found[k] is None or (self.weighs_words and found_words[k] is None)}
        if missing:
            start = time.perf_counter()
            ids = self.tokenizer.tokenize(list(missing.values()), trim=True)
            self._add(timings, "tokenize", start)
            # real length = last non-padding position + 1 (the eot); shortest first, trimmed per chunk
            lengths = ids.shape[1] - np.argmax((ids != 0)[:, ::-1], axis=1)
            order = np.argsort(lengths, kind="stable")
            missing_keys = list(missing)
            for start_row in range(0, len(order), self.batch_size):
                rows = order[start_row : start_row + self.batch_size]
                width = max(2, int(lengths[rows].max()))
                start = time.perf_counter()
                chunk = np.ascontiguousarray(ids[rows, :width])
                outputs = (self.backend.encode_text_outputs(chunk) if self.weighs_words
                           else {"text_embeds": self.backend.encode_text(chunk)})
                self._add(timings, "text_encoder", start)
                for n, (row, emb) in enumerate(zip(rows, outputs["text_embeds"], strict=True)):
                    found[missing_keys[row]] = emb
                    self.text_cache.put(missing_keys[row], emb)
                    if self.weighs_words:
                        size = int(lengths[row])
                        entry = Words(chunk[n, :size].copy(), outputs["text_token_embeds"][n, :size].copy(),
                                      outputs["token_mask"][n, :size].copy())  # copies: the chunk can go
                        found_words[missing_keys[row]] = entry
                        self.word_cache.put(missing_keys[row], entry)  # type: ignore[arg-type]
        if words is not None and self.weighs_words:
            words.extend(found_words[k] for k in keys)
        return _stack_found(found, keys)


def _assign_groups(out: list[Prediction], batch: _Batch, shas: dict[int, str],
                   grouper: NearDuplicateGrouper) -> None:
    """Set `group` and `duplicate_of` on every answered record, in input order: near-duplicate images (pHash)
    or the same normalised tweet text (RT prefix, mentions, URLs, case and spacing removed), transitively."""
    for i, prediction in enumerate(out):
        record = batch.items[i]
        if prediction.error is not None or prediction.id is None or not isinstance(record, Record):
            continue
        image_hash = batch.hashes.get(shas[i]) if i in shas else None
        assignment = grouper.add(str(prediction.id), image_hash, text_key(record.text))
        out[i] = replace(prediction, group=assignment.group, duplicate_of=assignment.duplicate_of,
                         image_hash=image_hash)


def _stack_found(found: dict[str, np.ndarray | None], keys: list[str]) -> np.ndarray:
    """Stack the embeddings of `keys` (every one encoded or cached by now) into float32 [N, D]."""
    rows = [found[k] for k in keys]
    if any(row is None for row in rows):
        raise RuntimeError("an embedding was neither cached nor encoded")  # a bug of ours, not a user error
    return np.stack([row for row in rows if row is not None]).astype(np.float32, copy=False)


def _has_image(record: Record | RecordError) -> bool:
    """True when the record names an image: a non-empty path, or bytes (even empty: that is a bad image)."""
    image = getattr(record, "image", None)
    return isinstance(image, (bytes, bytearray, memoryview)) or bool(image)


def _image_label(image: str | bytes | None) -> str:
    """How an error names the image: its path, or the size of the bytes given."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"{len(image)} bytes of image data"
    return str(image)


def _warn_if_cut(record: Record) -> None:
    """Log that a text field above MAX_TEXT_CHARS is read only in part (text cleaning cuts it)."""
    for name, value in (("text", record.text), ("llava_text", record.llava_text)):
        if value is not None and len(value) > MAX_TEXT_CHARS:
            log.warning("record %s: field '%s' has %d characters; only the first %d are used",
                        record.id, name, len(value), MAX_TEXT_CHARS)
