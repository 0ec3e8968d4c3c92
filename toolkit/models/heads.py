"""Fusion heads: pooled CLIP embeddings (image f, text e) -> class logits.

Shared front (as the paper's code): CLIP embedding -> ReLU -> Linear to d_repr (768), per modality. Then

- `guided`      Guided Cross Attention: f~ = ReLU(BN(W_pv f)), e~ = ReLU(BN(W_pt e));
                alpha_v = sigmoid(W_av e), alpha_e = sigmoid(W_ae f); v = alpha_v * f~, t = alpha_e * e~;
                classifier on [v; t].
- `guided-diff` Guided CA, then Differential Attention over the per-sample sequence X = [v, t] (2 tokens).
- `reference`   the authors' published code: gates from softmax(F F^T) F taken ACROSS THE BATCH and DiffAttn
                over a length-1 sequence. Batch-coupled: train/evaluate only, export refuses it.

Classifier: flatten -> FC(2 d_proj, 2 d_proj) -> BN -> ReLU -> Dropout(0.5) -> Linear(num_classes).
Modality baselines (`image` / `text`): the same front and projection for one modality, no gating.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from crisis_tool.models.diff_attention import LengthOneDiffAttn, MultiheadDiffAttn

HEAD_TYPES = ("guided", "guided-diff", "reference")
MODALITIES = ("both", "image", "text")
BATCH_COUPLED_HEADS = frozenset({"reference"})


@dataclass(frozen=True)
class HeadConfig:
    """Everything needed to rebuild a head (stored in the run dir's config.json)."""

    num_classes: int
    clip_embed_dim: int
    head: str = "guided-diff"
    modality: str = "both"
    d_repr: int = 768
    d_proj: int = 128
    num_heads: int = 4
    depth: int = 1
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.head not in HEAD_TYPES:
            raise ValueError(f"unknown head {self.head!r} (choose from {', '.join(HEAD_TYPES)})")
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r} (choose from {', '.join(MODALITIES)})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def embedding_front(clip_dim: int, d_repr: int) -> nn.Sequential:
    """The paper's per-modality map of the (already projected) CLIP embedding: ReLU then Linear."""
    return nn.Sequential(nn.ReLU(), nn.Linear(clip_dim, d_repr))


def classifier(width: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, num_classes)
    )


def batch_self_attention(x: torch.Tensor) -> torch.Tensor:
    """softmax(X X^T) X over the batch dimension: the authors' coupling of samples (reference head only)."""
    return torch.softmax(x @ x.transpose(-1, -2), dim=-1) @ x


class GuidedFusionHead(nn.Module):
    """Guided Cross Attention, optionally followed by Differential Attention, then the classifier."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_front = embedding_front(cfg.clip_embed_dim, cfg.d_repr)
        self.text_front = embedding_front(cfg.clip_embed_dim, cfg.d_repr)
        self.proj_visual = nn.Linear(cfg.d_repr, cfg.d_proj)
        self.proj_text = nn.Linear(cfg.d_repr, cfg.d_proj)
        self.proj_visual_bn = nn.BatchNorm1d(cfg.d_proj)
        self.proj_text_bn = nn.BatchNorm1d(cfg.d_proj)
        self.gate_from_text = nn.Linear(cfg.d_repr, cfg.d_proj)  # W_av: text gates the image
        self.gate_from_image = nn.Linear(cfg.d_repr, cfg.d_proj)  # W_ae: image gates the text
        if cfg.head == "guided-diff":
            self.diff_attn: nn.Module | None = MultiheadDiffAttn(cfg.d_proj, cfg.num_heads, cfg.depth)
        elif cfg.head == "reference":
            self.diff_attn = LengthOneDiffAttn(2 * cfg.d_proj, cfg.num_heads, cfg.depth)
        else:
            self.diff_attn = None
        self.classifier = classifier(2 * cfg.d_proj, cfg.num_classes, cfg.dropout)

    def gated_tokens(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Guided CA: returns the gated tokens stacked as [B, 2, d_proj] (v, t)."""
        f = self.image_front(image_embeds)
        e = self.text_front(text_embeds)
        f_tilde = F.relu(self.proj_visual_bn(self.proj_visual(f)))
        e_tilde = F.relu(self.proj_text_bn(self.proj_text(e)))
        if self.cfg.head == "reference":
            f, e = batch_self_attention(f), batch_self_attention(e)
        alpha_v = torch.sigmoid(self.gate_from_text(e))
        alpha_e = torch.sigmoid(self.gate_from_image(f))
        return torch.stack((alpha_v * f_tilde, alpha_e * e_tilde), dim=1)

    def modality_share(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """[B, 2]: how much of the fused vector each modality carries after the guided cross-attention gates,
        ||v|| / (||v|| + ||t||) and ||t|| / (||v|| + ||t||) (rows sum to 1; 0.5 each when both are zero)."""
        tokens = self.gated_tokens(image_embeds, text_embeds)
        norms = torch.linalg.vector_norm(tokens, dim=-1)  # [B, 2]
        total = norms.sum(dim=1, keepdim=True)
        return torch.where(total > 0, norms / total.clamp_min(1e-12), torch.full_like(norms, 0.5))

    @property
    def weighs_words(self) -> bool:
        """True when the head has a (per-sample) Differential Attention whose map can weigh the post's words."""
        return self.cfg.head == "guided-diff"

    def token_weights(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, token_embeds: torch.Tensor,
                      token_mask: torch.Tensor) -> torch.Tensor:
        """[B, L]: how much the head's Differential Attention weighs each word of the post.

        Each word's own CLIP feature (`token_embeds` [B, L, D], the text tower's output at that position through
        the same final norm and projection as the pooled embedding) takes the text path of the guided cross
        attention (front, projection, BN, ReLU, gated by the image); the DiffAttn's two query tokens (v, t) then
        attend over these word tokens with the layer's own Q/K projections (`MultiheadDiffAttn.weights_over`).
        An attribution read off the trained layer: the head itself sees the pooled text, not the words.
        """
        if not self.weighs_words:
            raise ValueError(f"a {self.cfg.head!r} head has no Differential Attention to weigh words with")
        queries = self.gated_tokens(image_embeds, text_embeds)  # [B, 2, d_proj]
        alpha_e = torch.sigmoid(self.gate_from_image(self.image_front(image_embeds)))  # [B, d_proj]
        words = self.proj_text(self.text_front(token_embeds))  # [B, L, d_proj]
        words = F.relu(self.proj_text_bn(words.transpose(1, 2)).transpose(1, 2)) * alpha_e.unsqueeze(1)
        return self.diff_attn.weights_over(queries, words, token_mask)  # type: ignore[union-attr]

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.gated_tokens(image_embeds, text_embeds)
        if self.cfg.head == "guided-diff":
            tokens = self.diff_attn(tokens)
        joint = tokens.flatten(1)
        if self.cfg.head == "reference":
            joint = self.diff_attn(joint)
        return self.classifier(joint)


class SingleModalityHead(nn.Module):
    """Image-only or text-only baseline: front, projection, classifier. Ignores the other embedding."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.front = embedding_front(cfg.clip_embed_dim, cfg.d_repr)
        self.proj = nn.Sequential(nn.Linear(cfg.d_repr, 2 * cfg.d_proj), nn.BatchNorm1d(2 * cfg.d_proj), nn.ReLU())
        self.classifier = classifier(2 * cfg.d_proj, cfg.num_classes, cfg.dropout)

    def modality_share(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """[B, 2]: all of the decision comes from the one modality this baseline reads."""
        one = torch.tensor([1.0, 0.0] if self.cfg.modality == "image" else [0.0, 1.0], device=image_embeds.device)
        return one.expand(image_embeds.shape[0], 2)

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        x = image_embeds if self.cfg.modality == "image" else text_embeds
        return self.classifier(self.proj(self.front(x)))


def build_head(cfg: HeadConfig) -> nn.Module:
    """The factory: a head module from its config."""
    if cfg.modality == "both":
        return GuidedFusionHead(cfg)
    return SingleModalityHead(cfg)
