"""Differential Attention against a direct evaluation of the formulas, and lambda_init values."""

from __future__ import annotations

import math

import pytest
import torch

from crisis_tool.models.diff_attention import LengthOneDiffAttn, MultiheadDiffAttn, lambda_init_fn


def test_lambda_init_values() -> None:
    assert lambda_init_fn(1) == pytest.approx(0.8 - 0.6 * math.exp(-0.3), abs=1e-12)
    assert lambda_init_fn(1) == pytest.approx(0.35551, abs=1e-5)
    assert lambda_init_fn(0) == pytest.approx(0.2, abs=1e-12)
    assert lambda_init_fn(12) == pytest.approx(0.8 - 0.6 * math.exp(-3.6), abs=1e-12)
    assert lambda_init_fn(1000) == pytest.approx(0.8, abs=1e-9)


def direct_diff_attention(layer: MultiheadDiffAttn, x: torch.Tensor) -> torch.Tensor:
    """Loop-per-sample, per-head evaluation of the formulas in the module docstring."""
    h, d = layer.num_heads, layer.head_dim
    lam = (math.exp(float(layer.lambda_q1 @ layer.lambda_k1)) - math.exp(float(layer.lambda_q2 @ layer.lambda_k2))
           + layer.lambda_init)
    wq, wk, wv, wo = (m.weight.T for m in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj))
    outputs = []
    for sample in x:
        q, k, v = sample @ wq, sample @ wk, sample @ wv
        heads = []
        for i in range(h):
            q1, q2 = q[:, (2 * i) * d:(2 * i + 1) * d], q[:, (2 * i + 1) * d:(2 * i + 2) * d]
            k1, k2 = k[:, (2 * i) * d:(2 * i + 1) * d], k[:, (2 * i + 1) * d:(2 * i + 2) * d]
            vi = v[:, i * 2 * d:(i + 1) * 2 * d]
            a = torch.softmax(q1 @ k1.T / math.sqrt(d), -1) - lam * torch.softmax(q2 @ k2.T / math.sqrt(d), -1)
            o = a @ vi
            rms = torch.sqrt((o**2).mean(-1, keepdim=True) + 1e-5)
            heads.append((1 - layer.lambda_init) * (o / rms) * layer.subln.weight)
        outputs.append(torch.cat(heads, -1) @ wo)
    return torch.stack(outputs)


def test_diff_attention_matches_formulas() -> None:
    torch.manual_seed(3)
    layer = MultiheadDiffAttn(embed_dim=16, num_heads=2, depth=1)
    with torch.no_grad():
        layer.subln.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        assert torch.allclose(layer(x), direct_diff_attention(layer, x), atol=1e-5)


def test_attention_maps_are_not_trivial_for_two_tokens() -> None:
    """With >= 2 tokens the two softmax maps differ; the authors' length-1 sequence makes both maps 1."""
    torch.manual_seed(0)
    layer = MultiheadDiffAttn(embed_dim=16, num_heads=2)
    with torch.no_grad():
        maps = layer.attention_maps(torch.randn(2, 2, 16))
        lam = float(layer.lambda_full())
    assert not torch.allclose(maps, torch.full_like(maps, 1 - lam), atol=1e-3)
    ref = LengthOneDiffAttn(16, 2)
    with torch.no_grad():
        ref_maps = ref.attention_maps(torch.randn(2, 1, 16))
        assert torch.allclose(ref_maps, torch.full_like(ref_maps, 1 - float(ref.lambda_full())), atol=1e-6)
