"""CLIP loading: local checkpoint files (as data, not code), unknown names, offline tags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from crisis_tool.clip_loader import load_clip, state_dict_sha256
from crisis_tool.runtime.errors import UsageError


def test_local_safetensors_checkpoint_round_trip(tmp_path: Path) -> None:
    source = load_clip("crisis-tiny", "none")
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(0.01)  # weights that differ from the seeded random init
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(ckpt))
    loaded = load_clip("crisis-tiny", str(ckpt))
    assert loaded.weights_sha256 == state_dict_sha256(source.model)
    assert loaded.weights_sha256 != source.weights_sha256  # the hash follows the weights, not the name
    assert loaded.pretrained == str(ckpt)


def test_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, bad)
    with pytest.raises(UsageError, match="not a loadable CLIP checkpoint"):
        load_clip("crisis-tiny", str(bad))


def test_unknown_model_and_tag() -> None:
    with pytest.raises(UsageError, match="unknown --clip-model"):
        load_clip("ViT-Z-99", "none")
    with pytest.raises(UsageError, match="unknown --pretrained tag 'laion9'"):
        load_clip("ViT-B-32", "laion9")


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_clip("crisis-tiny", str(tmp_path / "missing.safetensors"))
