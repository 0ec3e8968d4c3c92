"""Writing a bundle directory: graphs are already in place; add tokenizer, head weights, configs, manifest."""

from __future__ import annotations

import json
import shutil
import tarfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from crisis_tool.runtime.bundle import FORMAT_VERSION, MANIFEST_NAME, sha256_file

TOKENIZER_DIR = "tokenizer"
HEAD_WEIGHTS_NAME = "head.safetensors"
MODEL_CONFIG_NAME = "model_config.json"


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


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, size}} of every file in the bundle except the manifest."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST_NAME:
            table[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


def finalize_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file, then write `manifest.json` last."""
    manifest["files"] = file_table(root)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def write_tokenizer(root: Path, vocab_path: Path, context_length: int) -> dict[str, Any]:
    """Copy the BPE vocabulary and return the manifest's tokenizer entry."""
    from crisis_tool.runtime.tokenizer import ClipTokenizer

    (root / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    rel = f"{TOKENIZER_DIR}/{Path(vocab_path).name}"
    shutil.copyfile(vocab_path, root / rel)
    tok = ClipTokenizer(root / rel, context_length=context_length)
    return {"vocab_file": rel, "context_length": int(context_length),
            "sot_token_id": int(tok.sot_token_id), "eot_token_id": int(tok.eot_token_id)}


def write_bundle(
    root: Path,
    *,
    run_config: dict[str, Any],
    head_weights: Path,
    vocab_path: Path,
    graphs: dict[str, dict[str, Any]],
    precision: str,
    parity: dict[str, Any],
    validated: dict[str, Any],
    forced: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Complete a bundle in `root` whose ONNX graphs are already written. Returns the manifest."""
    root = Path(root)
    shutil.copyfile(head_weights, root / HEAD_WEIGHTS_NAME)
    (root / MODEL_CONFIG_NAME).write_text(json.dumps(run_config, indent=2) + "\n", encoding="utf-8")
    tokenizer = write_tokenizer(root, vocab_path, int(run_config["clip"]["context_length"]))
    manifest = {
        "format_version": FORMAT_VERSION,
        "crisis_tool_version": package_versions()["crisis_tool"],
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "task": run_config["task"],
        "labels": list(run_config["labels"]),
        "text_source": run_config["text_source"],
        "model": run_config,
        "preprocess": run_config["preprocess"],
        "tokenizer": tokenizer,
        "precision": precision,
        "graphs": graphs,
        "engines": {},
        "parity": parity,
        "validated": validated,
        "forced": bool(forced),
        **(extra or {}),
        "versions": package_versions(),
    }
    return finalize_manifest(root, manifest)


def write_tar(root: Path) -> Path:
    """`<bundle>.tar.gz` next to the bundle directory, holding it under its own name."""
    root = Path(root)
    target = root.with_name(root.name + ".tar.gz")
    with tarfile.open(target, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return target
