"""Reading and verifying a deployable bundle (written by `crisis_tool.export.bundle_writer`).

A bundle is a directory:

    manifest.json                 format version, model config, labels, text source, preprocessing,
                                  tokenizer, graphs per precision, engines, parity report, file hashes
    image_encoder.onnx            pixel_values [B,3,H,W] float32 -> image_embeds [B,D]
    text_encoder.onnx             input_ids [B,L] int64 -> text_embeds [B,D]
    head.onnx                     (image_embeds, text_embeds) -> (logits, probs)
    <graph>.<precision>.onnx      optional int8 / fp16 variants
    head.safetensors, model_config.json   the fusion head for the torch reference backend
    tokenizer/                    CLIP BPE vocabulary
    engines/                      optional TensorRT engines (device specific)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import BundleError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
COMPONENTS = ("image_encoder", "text_encoder", "head")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, Any]:
    """Load `manifest.json`, with a clear error for a missing or unreadable one."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {version!r} is not supported (expected {FORMAT_VERSION})")
    return manifest


def verify_bundle(root: Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its size and sha256.

    Returns the manifest; raises `BundleError` naming the first missing or altered file.
    """
    root = Path(root)
    manifest = read_manifest(root)
    files = manifest.get("files") or {}
    if not files:
        raise BundleError(f"{root}: manifest lists no files")
    for rel, meta in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            raise BundleError(f"{root}: missing file {rel}")
        if path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
            raise BundleError(f"{root}: file {rel} was altered (sha256 does not match the manifest)")
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> Bundle:
        root = Path(root)
        manifest = verify_bundle(root) if verify else read_manifest(root)
        return cls(root=root, manifest=manifest)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def text_source(self) -> str:
        return self.manifest["text_source"]

    @property
    def precision(self) -> str:
        """The precision the bundle was exported for (its default graphs)."""
        return self.manifest["precision"]

    def precisions(self) -> list[str]:
        return sorted(self.manifest["graphs"])

    def graph_path(self, component: str, precision: str | None = None) -> Path:
        """Path of an ONNX graph; `precision` defaults to the bundle's own."""
        precision = precision or self.precision
        graphs = self.manifest["graphs"].get(precision)
        if graphs is None:
            raise BundleError(f"{self.root}: no {precision} graphs (has {', '.join(self.precisions())})")
        if component not in graphs:
            raise BundleError(f"{self.root}: no {component} graph for {precision}")
        return self.root / graphs[component]["file"]

    def engine_entry(self, component: str, precision: str) -> dict[str, Any] | None:
        """Manifest entry of a TensorRT engine, or None when the bundle has none."""
        return (self.manifest.get("engines") or {}).get(precision, {}).get(component)

    @property
    def tokenizer_config(self) -> dict[str, Any]:
        return self.manifest["tokenizer"]

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return self.manifest["preprocess"]
