"""Frozen OpenCLIP encoders: build, load weights (tag, HF cache or local file), hash, freeze.

`--pretrained` accepts an OpenCLIP tag (`openai`, looked up in the Hugging Face cache or downloaded when online),
a local checkpoint path (safetensors or a state dict read with `weights_only=True`), or `none` for a
deterministic random init (seed 0) whose predictions are meaningless but reproducible, so that export can
rebuild the very encoders a head was trained on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.preprocess import PreprocessConfig

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
RANDOM_INIT_SEED = 0
_registered = False


def register_model_configs() -> None:
    """Register our architecture JSONs (e.g. `crisis-tiny`) with OpenCLIP, once."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def bpe_vocab_path() -> Path:
    """OpenCLIP's CLIP BPE vocabulary file (shipped inside the open_clip package)."""
    return Path(open_clip.tokenizer.default_bpe())


@dataclass
class LoadedClip:
    """A frozen CLIP model and what describes it."""

    model: torch.nn.Module
    model_name: str
    pretrained: str
    weights_sha256: str
    preprocess: PreprocessConfig
    context_length: int
    embed_dim: int
    vocab_path: Path

    def describe(self) -> dict:
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "embed_dim": self.embed_dim,
            "context_length": self.context_length,
        }


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Content hash of a model's weights (names, shapes, dtypes and bytes), independent of file format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _resolve_tag_checkpoint(model_name: str, tag: str, cache_dir: str | None) -> str:
    """Find (or, when online, download) the checkpoint file of an OpenCLIP pretrained tag."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = ", ".join(t for m, t in open_clip.list_pretrained() if m == model_name) or "none"
        raise UsageError(
            f"unknown --pretrained tag {tag!r} for {model_name} (known tags: {tags}, or a file path, or none)"
        )
    hf_cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    hint = (
        f"CLIP weights {model_name}/{tag} are not available offline: looked in the Hugging Face cache "
        f"({cache_dir or hf_cache}, repo {cfg.get('hf_hub', '?').rstrip('/')}) and ~/.cache/clip; "
        f"download them on a connected machine or pass --pretrained /path/to/open_clip_model.safetensors"
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline and cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo = cfg["hf_hub"].rstrip("/")
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
        raise UsageError(hint)
    try:
        path = open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:  # network, hub or cache failure: one clear line
        raise UsageError(f"{hint} ({type(exc).__name__})") from exc
    if not path:
        raise UsageError(hint)
    return path


def _load_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load a local checkpoint as data, never as code."""
    if not Path(path).is_file():
        raise UsageError(f"--pretrained {path}: no such file")
    try:
        open_clip.load_checkpoint(model, path, weights_only=True)
    except Exception as exc:
        raise UsageError(f"--pretrained {path}: not a loadable CLIP checkpoint ({type(exc).__name__}: {exc})") from exc


def load_clip(model_name: str = "ViT-B-32", pretrained: str = "openai", cache_dir: str | None = None) -> LoadedClip:
    """Build a frozen, eval-mode OpenCLIP model with the requested weights."""
    register_model_configs()
    if model_name not in open_clip.list_models():
        raise UsageError(f"unknown --clip-model {model_name!r} (e.g. ViT-B-32, crisis-tiny)")
    torch.manual_seed(RANDOM_INIT_SEED)
    previous = logging.root.level
    logging.root.setLevel(logging.ERROR)  # open_clip logs "no pretrained weights loaded" for pretrained=None
    try:
        model = open_clip.create_model(model_name, pretrained=None)
    finally:
        logging.root.setLevel(previous)
    if pretrained.lower() == "none":
        warnings.warn(
            "CLIP encoders use RANDOM weights (--pretrained none): predictions are meaningless; "
            "use this only for tests and demos",
            stacklevel=2,
        )
        pretrained = "none"
    elif Path(pretrained).exists() or os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".safetensors")):
        _load_checkpoint(model, pretrained)
    else:
        _load_checkpoint(model, _resolve_tag_checkpoint(model_name, pretrained, cache_dir))
    model.eval().requires_grad_(False)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    preprocess = PreprocessConfig(
        size=size if isinstance(size, int) else int(size[0]),
        mean=tuple(pp.get("mean", PreprocessConfig.mean)),
        std=tuple(pp.get("std", PreprocessConfig.std)),
        interpolation=pp.get("interpolation", "bicubic"),
        resize_mode=pp.get("resize_mode", "shortest"),
    )
    return LoadedClip(
        model=model,
        model_name=model_name,
        pretrained=pretrained,
        weights_sha256=state_dict_sha256(model),
        preprocess=preprocess,
        context_length=int(model.context_length),
        embed_dim=int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else int(
            model.visual.output_dim
        ),
        vocab_path=bpe_vocab_path(),
    )


def load_recorded_clip(clip_info: dict, owner: str | Path) -> LoadedClip:
    """The CLIP encoders a run or bundle (`owner`) recorded, refused unless their weights' sha256 matches."""
    clip = load_clip(clip_info["model_name"], clip_info["pretrained"])
    if clip.weights_sha256 != clip_info["weights_sha256"]:
        raise UsageError(
            f"{owner}: CLIP weights {clip_info['model_name']}/{clip_info['pretrained']} on this machine have "
            f"sha256 {clip.weights_sha256[:12]}, but the head was trained on {clip_info['weights_sha256'][:12]}; "
            "use the same checkpoint (--pretrained) the head was trained with"
        )
    return clip
