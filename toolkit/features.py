"""The feature cache: each unique image and each unique cleaned text is encoded once, then reused.

The encoders are frozen, so head training runs on cached pooled embeddings. Entries live under
`<cache>/<encoder id>/{image,text}.npz`; the encoder id hashes the CLIP model name, its weights' sha256,
the preprocessing and the context length, and each entry's key hashes its content (image file bytes; text
source + cleaned text). Reruns, other heads and other tasks reuse what is there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crisis_tool.clip_loader import LoadedClip
from crisis_tool.data.crisismmd import Example
from crisis_tool.progress import progress_bar
from crisis_tool.runtime.errors import DataError
from crisis_tool.runtime.preprocess import ImageLoadError, load_image, preprocess_image
from crisis_tool.runtime.text_clean import compose_text
from crisis_tool.runtime.tokenizer import ClipTokenizer


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoder_id(clip: LoadedClip) -> str:
    """Identity of the (frozen) encoders and their input pipeline."""
    ident = {**clip.describe(), "preprocess": clip.preprocess.to_dict()}
    return sha256_bytes(json.dumps(ident, sort_keys=True).encode())[:20]


class EmbeddingStore:
    """A persistent key -> embedding map for one encoder and one kind ("image" or "text")."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dirty = False
        self.table: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as data:
                self.table = dict(zip(data["keys"].tolist(), data["embeds"]))

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.table]

    def add(self, keys: Sequence[str], embeds: np.ndarray) -> None:
        self.table.update(zip(keys, embeds.astype(np.float32)))
        self.dirty = True

    def save(self) -> None:
        """Write the store if anything was added since it was loaded or last saved."""
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.table), dtype=str)
        embeds = np.stack(list(self.table.values())) if self.table else np.zeros((0, 0), np.float32)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, embeds=embeds)
        tmp.replace(self.path)
        self.dirty = False

    def stack(self, keys: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[k] for k in keys]).astype(np.float32)


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


class FeatureCache:
    """Encode-once feature cache for one frozen CLIP model."""

    def __init__(self, root: Path, clip: LoadedClip, batch_size: int = 64) -> None:
        self.clip = clip
        self.batch_size = batch_size
        self.dir = Path(root) / encoder_id(clip)
        self.images = EmbeddingStore(self.dir / "image.npz")
        self.texts = EmbeddingStore(self.dir / "text.npz")
        self.tokenizer = ClipTokenizer(clip.vocab_path, clip.context_length)

    def _encode(self, store: EmbeddingStore, keys: list[str], inputs: list, make_batch: Callable,
                encode: Callable, label: str) -> None:
        todo = store.missing(keys)
        if not todo:
            return
        by_key = dict(zip(keys, inputs))
        with progress_bar(f"encoding {label}", total=len(todo)) as advance:
            for chunk in _batched(todo, self.batch_size):
                with torch.inference_mode():
                    out = encode(make_batch([by_key[k] for k in chunk]))
                store.add(chunk, out.float().cpu().numpy())
                advance(len(chunk))
        store.save()

    def encode_texts(self, texts: list[str], source: str) -> list[str]:
        """Encode unique texts not yet cached; returns their keys."""
        keys = [sha256_bytes(f"{source}\0{t}".encode()) for t in texts]
        self._encode(self.texts, keys, texts, lambda b: torch.from_numpy(self.tokenizer(b)),
                     self.clip.model.encode_text, "texts")
        return keys

    def _flush_images(self, pending: dict[str, np.ndarray]) -> None:
        """Encode the decoded, not yet cached images and add them to the store."""
        if pending:
            with torch.inference_mode():
                out = self.clip.model.encode_image(torch.from_numpy(np.stack(list(pending.values()))))
            self.images.add(list(pending), out.float().cpu().numpy())
            pending.clear()

    def encode_images(self, paths: list[Path]) -> tuple[list[str | None], list[tuple[str, str]]]:
        """Encode unique readable images not yet cached; returns keys (None for bad images) and failures.

        Each file is read once: its bytes are hashed and, when the hash is not cached, decoded from the same
        bytes. At most one batch of decoded images is held in memory.
        """
        keys: list[str | None] = []
        bad: list[tuple[str, str]] = []
        failed: set[str] = set()
        pending: dict[str, np.ndarray] = {}
        with progress_bar("encoding images", total=len(paths)) as advance:
            for path in paths:
                advance(1)
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    keys.append(None)
                    bad.append((str(path), exc.strerror or str(exc)))
                    continue
                key = sha256_bytes(data)
                if key not in failed and key not in pending and key not in self.images.table:
                    try:
                        pending[key] = preprocess_image(load_image(data), self.clip.preprocess)
                    except ImageLoadError as exc:
                        failed.add(key)
                        bad.append((str(path), str(exc)))
                    if len(pending) >= self.batch_size:
                        self._flush_images(pending)
                keys.append(None if key in failed else key)
            self._flush_images(pending)
        self.images.save()
        return keys, bad

    def encode_split(self, root: Path, examples: list[Example], text_source: str,
                     llava: dict[str, str] | None, classes: Sequence[str], skip_bad: bool = False) -> EncodedSplit:
        """Features for a split. Unreadable images raise DataError, or are dropped with `skip_bad`."""
        llava = llava or {}
        missing_llava = 0
        texts = []
        for ex in examples:
            extra = llava.get(ex.image_id, ex.llava_text)
            if extra is None and text_source != "tweet":
                missing_llava += 1
            texts.append(compose_text(ex.text, extra, text_source))
        image_keys, bad = self.encode_images([Path(root) / ex.image for ex in examples])
        if bad and not skip_bad:
            first = "; ".join(f"{p} ({why})" for p, why in bad[:3])
            raise DataError(f"{len(bad)} missing or unreadable images, e.g. {first}; fix them or pass --skip-bad")
        keep = [i for i, k in enumerate(image_keys) if k is not None]
        text_keys = self.encode_texts([texts[i] for i in keep], text_source)
        index = {c: i for i, c in enumerate(classes)}
        return EncodedSplit(
            image_embeds=self.images.stack([image_keys[i] for i in keep]),
            text_embeds=self.texts.stack(text_keys),
            labels=np.array([index[examples[i].label] for i in keep], dtype=np.int64),
            examples=[examples[i] for i in keep],
            bad_images=bad,
            missing_llava=missing_llava,
        )
