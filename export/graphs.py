"""The torch modules behind each graph of a model spec (`crisis_tool.runtime.model_spec`; export time only).

OpenCLIP's towers are wrapped so that the TorchScript exporter keeps B and L dynamic: attention is written with
plain ops, the text tower slices its positional embedding and causal mask to L and finds the EOT explicitly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crisis_tool.runtime.model_spec import GraphSpec


class ExportableAttention(nn.Module):
    """`nn.MultiheadAttention` (self-attention, packed in-projection) written with plain ops.

    The TorchScript exporter bakes traced sizes into MHA's reshapes; this version keeps B and L dynamic.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise ValueError("only packed-projection self-attention can be exported")
        self.mha = mha
        self.num_heads = mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads
        self.batch_first = mha.batch_first

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None, **_: object
                ) -> tuple[torch.Tensor, None]:
        x = query if self.batch_first else query.transpose(0, 1)  # [B, N, E]
        qkv = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias)
        qkv = qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)  # [3, B, h, N, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        if attn_mask is not None:
            scores = scores + attn_mask
        out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).flatten(2)  # [B, N, E]
        out = self.mha.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None


def exportable_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` with every `nn.MultiheadAttention` replaced by `ExportableAttention`."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, child_name, ExportableAttention(child))
    return module


class ImageEncoderGraph(nn.Module):
    """pixel_values [B,3,H,W] -> image_embeds [B,D] (unnormalised, as `encode_image`)."""

    def __init__(self, clip_model: Any) -> None:  # an open_clip CLIP model
        super().__init__()
        self.visual = exportable_copy(clip_model.visual)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


class TextEncoderGraph(nn.Module):
    """input_ids [B,L] (L <= context length) -> text_embeds [B,D], equal to `encode_text` on ids padded to 77.

    The text tower is causal, so tokens after the EOT never influence it: running on the first L positions
    with the positional embedding sliced to L and the causal mask to LxL gives the same pooled EOT feature.
    The EOT position is found explicitly as argmax over (ids == eot) in int32 (no int64 ArgMax in the graph).
    """

    attn_mask: torch.Tensor  # a registered buffer

    def __init__(self, clip_model: Any, eot_token_id: int, tokens: bool = False) -> None:  # an open_clip CLIP
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = exportable_copy(clip_model.transformer)
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask.clone(), persistent=False)
        self.eot_token_id = int(eot_token_id)
        self.tokens = tokens  # also text_token_embeds [B,L,D] and token_mask [B,L] (1 at the words)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        eot_index = (input_ids == self.eot_token_id).to(torch.int32).argmax(dim=-1).to(torch.int64)
        rows = torch.arange(input_ids.shape[0], dtype=torch.int64, device=input_ids.device)
        pooled = self._project(x.flatten(0, 1)[rows * length + eot_index])  # a plain 1-D Gather
        if not self.tokens:
            return pooled
        positions = torch.arange(length, dtype=torch.int64, device=input_ids.device).unsqueeze(0)
        words = (positions >= 1) & (positions < eot_index.unsqueeze(1))  # after the SOT, before the EOT
        return pooled, self._project(x), words.to(pooled.dtype)


class HeadGraph(nn.Module):
    """(image_embeds [B,D], text_embeds [B,D]) -> (logits [B,C], probs [B,C] = softmax(logits)); with `explain`,
    also modality_share [B,2] (the head's `modality_share`: image and text share of the fused vector); with
    `tokens`, also inputs text_token_embeds [B,L,D], token_mask [B,L] and output token_weights [B,L] (the head's
    `token_weights`: its Differential Attention over the post's words)."""

    def __init__(self, head: nn.Module, explain: bool = False, tokens: bool = False) -> None:
        super().__init__()
        self.head = head
        self.explain = explain
        self.tokens = tokens

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, token_embeds: torch.Tensor | None = None,
                token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        logits = self.head(image_embeds, text_embeds)
        out: tuple[torch.Tensor, ...] = (logits, torch.softmax(logits, dim=-1))
        if self.explain:
            out += (self.head.modality_share(image_embeds, text_embeds),)  # type: ignore[operator]
        if self.tokens:
            out += (self.head.token_weights(image_embeds, text_embeds, token_embeds, token_mask),)  # type: ignore[operator]
        return out


FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "image": lambda clip_model, **_: ImageEncoderGraph(clip_model),
    "text": lambda clip_model, eot_token_id, tokens, **_: TextEncoderGraph(clip_model, eot_token_id, tokens),
    "head": lambda head, explain, tokens, **_: HeadGraph(head, explain, tokens),
}


def build_graph_module(spec: GraphSpec, clip_model: nn.Module, heads: dict[str, nn.Module], eot_token_id: int
                       ) -> nn.Module:
    """The eval-mode torch module of one graph of the spec (a head graph wraps its task's head)."""
    head = heads.get(spec.task) if spec.task else None
    explain = "modality_share" in spec.output_names
    tokens = "text_token_embeds" in spec.output_names or "token_weights" in spec.output_names
    return FACTORIES[spec.role](clip_model=clip_model, head=head, eot_token_id=eot_token_id, explain=explain,
                                tokens=tokens).eval()
