"""Writing a bundle directory: graphs are already in place; add tokenizer, head weights, run config, manifest.

Every name (files, manifest keys) comes from `crisis_tool.runtime.manifest`; the run config is stored once,
in `model_config.json`, and the manifest repeats only what the runtime needs, checked against it on load.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from crisis_tool.runtime.atomic_files import atomic_output
from crisis_tool.runtime.manifest import (
    MODEL_CONFIG_NAME,
    TOKENIZER_DIR,
    GraphEntry,
    Manifest,
    TokenizerEntry,
)
from crisis_tool.runtime.model_spec import ModelSpec
from crisis_tool.runtime.tokenizer import ClipTokenizer


def package_versions() -> dict[str, str]:
    """Versions of the packages that produced the bundle."""
    versions = {}
    for key, dist in (("torch", "torch"), ("open_clip", "open_clip_torch"), ("onnx", "onnx"),
                      ("onnxruntime", "onnxruntime-gpu"), ("crisis_tool", "crisis-tool")):
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = "unknown"
    if versions["onnxruntime"] == "unknown":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions


def write_tokenizer(root: Path, vocab_path: Path, context_length: int) -> TokenizerEntry:
    """Copy the BPE vocabulary and return the manifest's tokenizer entry."""
    (root / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    rel = f"{TOKENIZER_DIR}/{Path(vocab_path).name}"
    shutil.copyfile(vocab_path, root / rel)
    tok = ClipTokenizer(root / rel, context_length=context_length)
    return TokenizerEntry(rel, int(context_length), int(tok.sot_token_id), int(tok.eot_token_id))


def graph_entries(spec: ModelSpec, paths: dict[str, Path]) -> dict[str, GraphEntry]:
    """Manifest entries of one precision's graphs, in the spec's order (file names relative to the bundle)."""
    return {name: GraphEntry.for_graph(graph, paths[name].name) for name, graph in spec.graphs().items()
            if name in paths}


def write_head_weights(root: Path, spec: ModelSpec, heads: dict[str, Any]) -> None:
    """One safetensors file per head (torch modules), named by the spec."""
    from safetensors.torch import save_file

    for head in spec.heads:
        state = {k: v.detach().cpu().contiguous() for k, v in heads[head.task].state_dict().items()}
        save_file(state, str(root / head.weights))


def encoder_origin(run_config: dict[str, Any]) -> dict[str, Any]:
    """What the bundle says of its encoders: model, weights and whether they are random."""
    clip = run_config.get("clip", {})
    pretrained = str(clip.get("pretrained"))
    return {"model": clip.get("model_name"), "pretrained": pretrained, "random": pretrained == "none"}


def write_bundle(
    root: Path,
    *,
    run_config: dict[str, Any],
    spec: ModelSpec,
    heads: dict[str, Any],
    vocab_path: Path,
    graphs: dict[str, dict[str, Path]],
    precision: str,
    parity: dict[str, Any],
    validated: dict[str, Any],
    forced: bool,
    max_batch: int,
    opset: int,
    calibration: str | None = None,
) -> Manifest:
    """Complete a bundle in `root` whose ONNX graphs are already written. Returns the saved manifest."""
    root = Path(root)
    write_head_weights(root, spec, heads)
    (root / MODEL_CONFIG_NAME).write_text(json.dumps(run_config, indent=2) + "\n", encoding="utf-8")
    tokenizer = write_tokenizer(root, vocab_path, int(run_config["clip"]["context_length"]))
    size = int(run_config["preprocess"]["size"])
    versions = package_versions()
    manifest = Manifest(
        crisis_tool_version=versions["crisis_tool"],
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        spec=spec,
        text_source=run_config["text_source"],
        preprocess=run_config["preprocess"],
        tokenizer=tokenizer,
        dims={"H": size, "W": size, "D": int(run_config["clip"]["embed_dim"])},
        precision=precision,
        max_batch=int(max_batch),
        opset=int(opset),
        graphs={p: graph_entries(spec, paths) for p, paths in graphs.items()},
        parity=parity,
        validated=validated,
        forced=bool(forced),
        versions=versions,
        calibration=calibration,
        encoders=encoder_origin(run_config),
    )
    return manifest.save(root)


def write_tar(root: Path) -> Path:
    """`<bundle>.tar.gz` next to the bundle directory, holding it under its own name (written atomically)."""
    root = Path(root)
    target = root.with_name(root.name + ".tar.gz")
    with atomic_output(target, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
        tar.add(root, arcname=root.name)
    return target
