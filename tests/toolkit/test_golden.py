"""Golden values on the CPU (as open_clip does): catch unintended changes to the architecture or the
deterministic random init that `--pretrained none` bundles rely on. Regenerate only on purpose."""

from __future__ import annotations

import torch

from crisis_tool.clip_loader import load_clip
from crisis_tool.models.heads import HeadConfig, build_head

GOLDEN_HEAD_LOGITS = [
    [0.11472657322883606, 0.04210788011550903, -0.16668231785297394],
    [0.0795900896191597, 0.006297051906585693, -0.0722775086760521],
]
GOLDEN_TINY_SHA256 = "fce067e4071fdb2067f2d5f83a7e00d6d9a58871b1dacf26b20d07d97b91c39d"
GOLDEN_TINY_IMAGE_EMBED = [-1.0981316566467285, 0.1733209788799286, 0.06429611146450043, -1.0750863552093506]


def test_guided_diff_head_golden_logits() -> None:
    torch.manual_seed(0)
    head = build_head(HeadConfig(num_classes=3, clip_embed_dim=16)).eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 16, generator=gen), torch.randn(2, 16, generator=gen)
    with torch.no_grad():
        assert torch.allclose(head(x, y), torch.tensor(GOLDEN_HEAD_LOGITS), atol=1e-5)


def test_tiny_clip_random_init_is_reproducible() -> None:
    clip = load_clip("crisis-tiny", "none")
    assert clip.weights_sha256 == GOLDEN_TINY_SHA256
    assert clip.embed_dim == 64 and clip.context_length == 77 and clip.preprocess.size == 224
    with torch.no_grad():
        emb = clip.model.encode_image(torch.full((1, 3, 224, 224), 0.5))[0, :4]
    assert torch.allclose(emb, torch.tensor(GOLDEN_TINY_IMAGE_EMBED), atol=1e-4)
    assert all(not p.requires_grad for p in clip.model.parameters()) and not clip.model.training
