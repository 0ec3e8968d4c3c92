"""Heads: batch invariance of guided / guided-diff, batch coupling of the authors' reference head."""

from __future__ import annotations

import pytest
import torch

from crisis_tool.models.heads import HeadConfig, build_head


def trained_like(cfg: HeadConfig) -> torch.nn.Module:
    """A head whose BatchNorm running stats are non-trivial, in eval mode."""
    torch.manual_seed(0)
    head = build_head(cfg)
    head.train()
    with torch.no_grad():
        for _ in range(5):
            head(torch.randn(16, cfg.clip_embed_dim) * 2 + 0.5, torch.randn(16, cfg.clip_embed_dim))
    return head.eval()


@pytest.mark.parametrize("kind", ["guided", "guided-diff"])
def test_sample_alone_equals_sample_in_shuffled_batch(kind: str) -> None:
    head = trained_like(HeadConfig(num_classes=3, clip_embed_dim=32, head=kind))
    img, txt = torch.randn(32, 32), torch.randn(32, 32)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = head(img[perm], txt[perm])
        for pos, i in enumerate(perm.tolist()):
            alone = head(img[i : i + 1], txt[i : i + 1])
            assert (alone - batched[pos : pos + 1]).abs().max() <= 1e-5


def test_reference_head_is_batch_coupled() -> None:
    """The authors' head: the same tweet gets other logits when other tweets share its batch."""
    head = trained_like(HeadConfig(num_classes=3, clip_embed_dim=32, head="reference"))
    torch.manual_seed(5)
    x = torch.randn(1, 32)
    others = 3 * torch.randn(31, 32)
    with torch.no_grad():
        alone = head(x, x)
        in_batch = head(torch.cat([x, others]), torch.cat([x, others]))[:1]
    assert (alone - in_batch).abs().max() > 1e-2


@pytest.mark.parametrize("modality", ["image", "text"])
def test_single_modality_heads_ignore_the_other_input(modality: str) -> None:
    head = trained_like(HeadConfig(num_classes=2, clip_embed_dim=16, modality=modality))
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    with torch.no_grad():
        if modality == "image":
            assert torch.equal(head(a, b), head(a, torch.randn(4, 16)))
        else:
            assert torch.equal(head(a, b), head(torch.randn(4, 16), b))


def test_guided_diff_shapes_and_parameters() -> None:
    cfg = HeadConfig(num_classes=6, clip_embed_dim=512)
    head = build_head(cfg)
    assert head.diff_attn.num_heads == 4 and head.diff_attn.head_dim == 16
    out = head.eval()(torch.randn(5, 512), torch.randn(5, 512))
    assert out.shape == (5, 6)


def test_unknown_head_rejected() -> None:
    with pytest.raises(ValueError, match="unknown head"):
        HeadConfig(num_classes=2, clip_embed_dim=8, head="transformer")
