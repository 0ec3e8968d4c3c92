"""Multi-head Differential Attention (Ye et al., "Differential Transformer", 2024), bidirectional.

For a per-sample token sequence X [B, N, E] and h heads of size d = E / h / 2:

    [Q1; Q2] = X W_Q,  [K1; K2] = X W_K,  V = X W_V
    A        = softmax(Q1 K1^T / sqrt(d)) - lambda * softmax(Q2 K2^T / sqrt(d))
    lambda   = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init
    head_i   = (1 - lambda_init) * RMSNorm(A V)          (RMSNorm over the head's 2d channels)
    out      = concat(head_1..head_h) W_O

Unlike the authors' code, attention runs over N >= 2 tokens of ONE sample (never across the batch),
so each sample's output is independent of its batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lambda_init_fn(depth: int) -> float:
    """lambda_init = 0.8 - 0.6 * exp(-0.3 * depth); depth 1 (the paper's code) gives about 0.3555."""
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with an elementwise gain."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MultiheadDiffAttn(nn.Module):
    """Bidirectional multi-head differential self-attention over a per-sample sequence."""

    def __init__(self, embed_dim: int, num_heads: int = 4, depth: int = 1) -> None:
        super().__init__()
        if embed_dim % (2 * num_heads):
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 2 * num_heads ({2 * num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads // 2
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.lambda_init = lambda_init_fn(depth)
        self.lambda_q1 = nn.Parameter(torch.randn(self.head_dim) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(self.head_dim) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(self.head_dim) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(self.head_dim) * 0.1)
        self.subln = RMSNorm(2 * self.head_dim)

    def lambda_full(self) -> torch.Tensor:
        """The re-parameterised scalar lambda."""
        lam1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1))
        lam2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2))
        return lam1 - lam2 + self.lambda_init

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The differential attention maps A, shape [B, heads, N, N]."""
        bsz, n, _ = x.shape
        q = self.q_proj(x).view(bsz, n, self.num_heads, 2, self.head_dim).permute(0, 2, 3, 1, 4)
        k = self.k_proj(x).view(bsz, n, self.num_heads, 2, self.head_dim).permute(0, 2, 3, 1, 4)
        scores = torch.softmax((q * self.scaling) @ k.transpose(-1, -2), dim=-1)  # [B, h, 2, N, N]
        return scores[:, :, 0] - self.lambda_full() * scores[:, :, 1]

    def weights_over(self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L]: the differential attention that `queries` [B, N, E] pay to each of `keys` [B, L, E], through this
        layer's own projections (softmax(Q1 K1^T) - lambda softmax(Q2 K2^T)), averaged over heads and queries.
        Positions where `mask` [B, L] is 0 are left out of both softmaxes and get weight 0."""
        q = self.q_proj(queries).unflatten(-1, (self.num_heads, 2, self.head_dim)).permute(0, 2, 3, 1, 4)
        k = self.k_proj(keys).unflatten(-1, (self.num_heads, 2, self.head_dim)).permute(0, 2, 3, 1, 4)
        scores = (q * self.scaling) @ k.transpose(-1, -2)  # [B, h, 2, N, L]
        scores = scores + ((mask - 1.0) * 1e4)[:, None, None, None, :]  # exp(-1e4) is 0 in fp32
        maps = torch.softmax(scores, dim=-1)
        weights = (maps[:, :, 0] - self.lambda_full() * maps[:, :, 1]).mean(dim=(1, 2))  # [B, L]
        return weights * mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, E] -> [B, N, E]."""
        bsz, n, _ = x.shape
        v = self.v_proj(x).view(bsz, n, self.num_heads, 2 * self.head_dim).transpose(1, 2)  # [B, h, N, 2d]
        heads = self.subln(self.attention_maps(x) @ v) * (1.0 - self.lambda_init)
        return self.out_proj(heads.transpose(1, 2).reshape(bsz, n, self.embed_dim))


class LengthOneDiffAttn(MultiheadDiffAttn):
    """The authors' published variant: the 2*d_proj vector is a sequence of length ONE.

    Both softmax maps are then identically 1, so A = 1 - lambda and the layer is a gated linear map.
    Kept only for the `reference` head, to reproduce their numbers.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, E]
        return super().forward(x.unsqueeze(1)).squeeze(1)
