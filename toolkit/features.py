"""The feature cache: each unique image and each unique text is encoded once, then reused.

The encoders are frozen, so head training runs on cached pooled embeddings. Entries live under
`<cache>/<encoder id>/{image,text}/` (append-only shards, see `crisis_tool.feature_store`); the encoder id
hashes the CLIP model name, its weights' sha256, the preprocessing, the context length and the cache format,
and each entry's key hashes exactly what the encoder sees: an image file's bytes, or a text's token ids.
Reruns, other heads, other tasks and other text sources reuse what is there.

A record's text comes from `crisis_tool.runtime.record_text`, the rule predict and bench use. Image files are
read as untrusted data (`read_capped`: regular files only, at most `max_image_bytes`), so a FIFO, a device or a
huge file is that record's error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crisis_tool.clip_loader import LoadedClip
from crisis_tool.data.crisismmd import Example
from crisis_tool.feature_store import EmbeddingStore, log_to_stderr
from crisis_tool.progress import progress_bar
from crisis_tool.runtime.atomic_files import check_writable_dir
from crisis_tool.runtime.errors import DataError
from crisis_tool.runtime.file_guard import DEFAULT_MAX_IMAGE_BYTES, read_capped
from crisis_tool.runtime.preprocess import load_image, preprocess_image
from crisis_tool.runtime.record_text import RecordText, record_text
from crisis_tool.runtime.tokenizer import ClipTokenizer

CACHE_FORMAT = 2  # 2: append-only shards, text keys hash token ids
NON_FINITE = "the image encoder returned NaN or inf for this image"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoder_id(clip: LoadedClip) -> str:
    """Identity of the (frozen) encoders and their input pipeline."""
    ident = {**clip.describe(), "preprocess": clip.preprocess.to_dict(), "cache_format": CACHE_FORMAT}
    return sha256_bytes(json.dumps(ident, sort_keys=True).encode())[:20]


def example_texts(examples: Sequence[Example], captions: Mapping[str, str] | None,
                  source: str) -> list[RecordText]:
    """The text of each example under `source`: its tweet, and its caption from `captions` (by image_id) or
    else from the split file's LLaVA_text column, through the runtime's one rule."""
    captions = captions or {}
    return [record_text(ex.text, captions.get(ex.image_id, ex.llava_text), source) for ex in examples]


@dataclass
class EncodedSplit:
    """Cached features of the usable rows of a split, plus what was left out."""

    image_embeds: np.ndarray
    text_embeds: np.ndarray
    labels: np.ndarray
    examples: list[Example]
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    missing_llava: int = 0


def _batched(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _finite_rows(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    array = out.float().cpu().numpy()
    return array, np.isfinite(array).all(axis=1)


class FeatureCache:
    """Encode-once feature cache for one frozen CLIP model.

    `cache.problems` lists the corrupt cache files found (each was logged, moved aside and re-encoded).
    """

    def __init__(self, root: Path, clip: LoadedClip, batch_size: int = 64,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, save_every: int = 1024,
                 log: Callable[[str], None] = log_to_stderr) -> None:
        self.clip = clip
        self.batch_size = batch_size
        self.max_image_bytes = max_image_bytes
        self.dir = check_writable_dir(Path(root), "--cache-dir") / encoder_id(clip)
        opts = {"dim": clip.embed_dim, "save_every": save_every, "log": log}
        self.images = EmbeddingStore(self.dir / "image", **opts)
        self.texts = EmbeddingStore(self.dir / "text", **opts)
        self.tokenizer = ClipTokenizer(clip.vocab_path, clip.context_length)

    @property
    def problems(self) -> list[str]:
        return self.images.problems + self.texts.problems

    def encode_texts(self, texts: list[str]) -> list[str]:
        """Encode the unique texts not yet cached; returns their keys. DataError if the encoder gives NaN/inf."""
        unique = list(dict.fromkeys(texts))
        ids = self.tokenizer(unique) if unique else np.zeros((0, self.clip.context_length), np.int64)
        key_of = {t: sha256_bytes(np.ascontiguousarray(row, dtype=np.int64).tobytes()) for t, row in zip(unique, ids)}
        keys = [key_of[t] for t in texts]
        todo = self.texts.missing(keys)
        if not todo:
            return keys
        rows = {key_of[t]: row for t, row in zip(unique, ids)}
        text_of = {key_of[t]: t for t in unique}
        try:
            with progress_bar("encoding texts", total=len(todo)) as advance:
                for chunk in _batched(todo, self.batch_size):
                    with torch.inference_mode():
                        out = self.clip.model.encode_text(torch.from_numpy(np.stack([rows[k] for k in chunk])))
                    array, finite = _finite_rows(out)
                    if not finite.all():
                        bad = [text_of[k] for k, ok in zip(chunk, finite) if not ok]
                        raise DataError(f"the text encoder returned NaN or inf for {len(bad)} texts (first: "
                                        f"{bad[0][:60]!r}); the CLIP weights are broken")
                    self.texts.add(chunk, array)
                    advance(len(chunk))
        finally:
            self.texts.save()  # on Ctrl-C too: keep what was encoded
        self.texts.compact()
        return keys

    def _flush_images(self, pending: dict[str, np.ndarray], failed: dict[str, str]) -> None:
        """Encode the decoded, not yet cached images and add the finite ones to the store."""
        if pending:
            with torch.inference_mode():
                out = self.clip.model.encode_image(torch.from_numpy(np.stack(list(pending.values()))))
            array, finite = _finite_rows(out)
            keys = list(pending)
            failed.update((k, NON_FINITE) for k, ok in zip(keys, finite) if not ok)
            self.images.add([k for k, ok in zip(keys, finite) if ok], array[finite])
            pending.clear()

    def encode_images(self, paths: list[Path]) -> tuple[list[str | None], list[tuple[str, str]]]:
        """Encode unique readable images not yet cached; returns keys (None for bad images) and failures.

        Each file is read once (a regular file of at most `max_image_bytes`): its bytes are hashed and, when
        the hash is not cached, decoded from the same bytes. At most one batch of decoded images is held in
        memory; the store saves progress as it goes, and on Ctrl-C.
        """
        keys: list[str | None] = []
        read_errors: dict[int, str] = {}
        failed: dict[str, str] = {}
        pending: dict[str, np.ndarray] = {}
        try:
            with progress_bar("encoding images", total=len(paths)) as advance:
                for i, path in enumerate(paths):
                    advance(1)
                    try:
                        data = read_capped(path, self.max_image_bytes)
                    except DataError as exc:
                        keys.append(None)
                        read_errors[i] = str(exc).removeprefix(f"{path}: ")
                        continue
                    key = sha256_bytes(data)
                    keys.append(key)
                    if key not in failed and key not in pending and key not in self.images.table:
                        try:
                            pending[key] = preprocess_image(load_image(data), self.clip.preprocess)
                        except DataError as exc:
                            failed[key] = str(exc)
                        if len(pending) >= self.batch_size:
                            self._flush_images(pending, failed)
                self._flush_images(pending, failed)
        finally:
            self.images.save()  # on Ctrl-C too: keep what was encoded
        self.images.compact()
        bad = []
        for i, path in enumerate(paths):
            why = read_errors.get(i) or failed.get(keys[i] or "")
            if why:
                keys[i] = None
                bad.append((str(path), why))
        return keys, bad

    def encode_split(self, root: Path, examples: list[Example], text_source: str,
                     llava: dict[str, str] | None, classes: Sequence[str], skip_bad: bool = False) -> EncodedSplit:
        """Features for a split. Unreadable images raise DataError, or are dropped with `skip_bad`."""
        texts = example_texts(examples, llava, text_source)
        image_keys, bad = self.encode_images([Path(root) / ex.image for ex in examples])
        if bad and not skip_bad:
            first = "; ".join(f"{p} ({why})" for p, why in bad[:3])
            raise DataError(f"{len(bad)} missing or unreadable images, e.g. {first}; fix them or pass --skip-bad")
        keep = [i for i, k in enumerate(image_keys) if k is not None]
        if examples and not keep:
            raise DataError(f"none of the {len(examples)} images could be used (first: {bad[0][0]}: {bad[0][1]})")
        text_keys = self.encode_texts([texts[i].text for i in keep])
        index = {c: i for i, c in enumerate(classes)}
        return EncodedSplit(
            image_embeds=self.images.stack([image_keys[i] for i in keep]),  # type: ignore[misc]
            text_embeds=self.texts.stack(text_keys),
            labels=np.array([index[examples[i].label] for i in keep], dtype=np.int64),
            examples=[examples[i] for i in keep],
            bad_images=bad,
            missing_llava=sum(t.caption_missing for t in texts),
        )
