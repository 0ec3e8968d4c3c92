"""Reading and verifying a deployable bundle (written by `crisis_tool.export.bundle_writer`).

A bundle is a directory (file names are declared in `crisis_tool.runtime.manifest`):

    manifest.json                 format version, labels, text source, preprocessing, tokenizer, graphs per
                                  precision, engines, parity report, file hashes (typed: `Manifest`)
    manifest.sha256               digest of the canonical manifest: no field can change unnoticed
    image_encoder.onnx            pixel_values [B,3,H,W] float32 -> image_embeds [B,D]
    text_encoder.onnx             input_ids [B,L] int64 -> text_embeds [B,D]
    head_<task>.onnx              one per head: (image_embeds, text_embeds) -> (logits, probs)
    <graph>.<precision>.onnx      optional int8 / fp16 variants
    head_<task>.safetensors       each head's weights
    model_config.json             the run config (stored once, here)

A format-2 bundle (one head: `head.onnx`, `head.safetensors`) reads as a one-head spec.
    tokenizer/                    CLIP BPE vocabulary
    engines/                      optional TensorRT engines (device specific)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisis_tool.runtime.errors import BundleError
from crisis_tool.runtime.file_guard import read_capped
from crisis_tool.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MODEL_CONFIG_NAME,
    EngineEntry,
    Manifest,
    sha256_file,
)
from crisis_tool.runtime.manifest_schema import resolve_inside
from crisis_tool.runtime.model_spec import HeadSpec, ModelSpec
from crisis_tool.runtime.run_config import run_config_heads

__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "Bundle", "sha256_file", "verify_bundle"]

MAX_CONFIG_BYTES = 4 << 20


def verify_bundle(root: str | Path) -> Manifest:
    """Check the manifest's digest and every listed file (size and sha256); returns the manifest."""
    return Bundle.load(root, verify=True).manifest


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk and its parsed manifest (verified unless loaded with verify=False)."""

    root: Path
    manifest: Manifest

    @classmethod
    def load(cls, root: str | Path, verify: bool = True, pubkey: str | Path | None = None) -> Bundle:
        """Parse the manifest; with `verify` also check its digest, every file hash and the run config.

        Without `verify` the manifest is still parsed against its schema and no path may leave the bundle.
        With `pubkey` (an Ed25519 public key PEM) the bundle must also carry a valid signature by that key
        (`crisis_tool.runtime.signing`), and is always verified.
        """
        root = Path(root)
        if pubkey is not None:
            from crisis_tool.runtime.signing import verify_signature

            verify_signature(root, pubkey)
        manifest = Manifest.load(root)
        bundle = cls(root=root, manifest=manifest)
        if verify or pubkey is not None:
            manifest.verify(root)
            bundle.check_run_config()
        return bundle

    # ------------------------------------------------------------------ what the manifest says
    @property
    def spec(self) -> ModelSpec:
        """Shared encoders and one named head per task."""
        return self.manifest.spec

    @property
    def heads(self) -> tuple[HeadSpec, ...]:
        return self.manifest.spec.heads

    @property
    def labels(self) -> list[str]:
        """The first head's labels (the only ones of a one-head bundle)."""
        return list(self.manifest.labels)

    @property
    def text_source(self) -> str:
        return self.manifest.text_source

    @property
    def precision(self) -> str:
        """The precision the bundle was exported for (its default graphs)."""
        return self.manifest.precision

    def precisions(self) -> list[str]:
        return sorted(self.manifest.graphs)

    @property
    def dims(self) -> dict[str, int]:
        """Fixed sizes shared by the graphs (H, W, D) and the text context length L (a head adds its C)."""
        return {**self.manifest.dims, "L": self.manifest.tokenizer.context_length}

    @property
    def tokenizer_config(self) -> dict[str, Any]:
        return self.manifest.tokenizer.to_dict()

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return dict(self.manifest.preprocess)

    # ------------------------------------------------------------------ files
    def path(self, rel: str) -> Path:
        """A bundle file by its manifest path, refused when it would leave the bundle."""
        return resolve_inside(self.root, rel)

    def has_graphs(self, precision: str) -> bool:
        return precision in self.manifest.graphs

    def graph_path(self, graph: str, precision: str | None = None) -> Path:
        """Path of an ONNX graph; `precision` defaults to the bundle's own."""
        precision = precision or self.precision
        graphs = self.manifest.graphs.get(precision)
        if graphs is None:
            raise BundleError(f"{self.root}: no {precision} graphs (has {', '.join(self.precisions())})")
        if graph not in graphs:
            raise BundleError(f"{self.root}: no {graph} graph for {precision}")
        return self.path(graphs[graph].file)

    def graph_path_or_fp32(self, graph: str, precision: str) -> Path:
        """The variant's graph, or the fp32 one when the variant leaves that graph unquantised."""
        has = graph in self.manifest.graphs.get(precision, {})
        return self.graph_path(graph, precision if has else "fp32")

    def engine_entry(self, graph: str, precision: str) -> EngineEntry | None:
        """Manifest entry of a TensorRT engine, or None when the bundle has none."""
        return self.manifest.engines.get(precision, {}).get(graph)

    # ------------------------------------------------------------------ the run config (hashed file)
    def run_config(self) -> dict[str, Any]:
        """`model_config.json`: the training run's config (head, CLIP, labels, text source, preprocessing)."""
        path = self.path(MODEL_CONFIG_NAME)
        try:
            data = json.loads(read_capped(path, MAX_CONFIG_BYTES).decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - missing, FIFO, too large or not JSON: one line
            raise BundleError(f"{path}: unreadable run config ({exc})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{path}: the run config must be a JSON object")
        return data

    def check_run_config(self) -> None:
        """BundleError unless every head, the text source, preprocessing and dims agree with the hashed run config.

        Labels, class counts, temperature and review threshold of each head are stated twice (manifest and
        `model_config.json`), so changing one of them means changing both files.
        """
        config = self.run_config()
        m = self.manifest
        where = f"{self.root}: {MODEL_CONFIG_NAME}"
        by_task = {h["task"]: h for h in run_config_heads(config, where)}
        if list(by_task) != list(m.spec.tasks):
            raise BundleError(f"{self.root}: manifest heads {list(m.spec.tasks)} disagree with {MODEL_CONFIG_NAME} "
                              f"({list(by_task)})")
        checks: list[tuple[str, Any, Any]] = [
            ("text_source", m.text_source, config.get("text_source")),
            ("preprocess", m.preprocess, config.get("preprocess")),
        ]
        for head in m.spec.heads:
            entry = by_task[head.task]
            cfg = entry["head"]
            checks += [
                (f"{head.task} labels", list(head.labels), entry["labels"]),
                (f"{head.task} classes", len(head.labels), cfg.get("num_classes")),
                (f"{head.task} temperature", head.temperature, entry["temperature"]),
                (f"{head.task} review threshold", head.review_threshold, entry["review_threshold"]),
                ("dims.D (CLIP embedding width)", m.dims["D"], cfg.get("clip_embed_dim")),
            ]
        for name, manifest_value, config_value in checks:
            if manifest_value != config_value:
                raise BundleError(f"{self.root}: manifest {name} {manifest_value!r} disagrees with "
                                  f"{MODEL_CONFIG_NAME} ({config_value!r})")
