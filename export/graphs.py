"""The graph table: every exported graph, its torch wrapper, I/O, dynamic axes and parity tolerances.

Embeddings are OpenCLIP's unnormalised `encode_image` / `encode_text` outputs (what the heads are trained on).
Symbolic dims: B batch (dynamic), L text length (dynamic, 1..context_length), H/W image size, D embed dim,
C number of classes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "fp16", "int8")
DYNAMIC_DIMS = ("B", "L")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name and symbolic shape."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Tolerance:
    """A parity gate. `None` disables a check; top-1 is a fraction of samples that must agree."""

    max_abs: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None


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

    def __init__(self, clip_model: nn.Module) -> None:
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

    def __init__(self, clip_model: nn.Module, eot_token_id: int) -> None:
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = exportable_copy(clip_model.transformer)
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask.clone(), persistent=False)
        self.eot_token_id = int(eot_token_id)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        eot_index = (input_ids == self.eot_token_id).to(torch.int32).argmax(dim=-1).to(torch.int64)
        rows = torch.arange(input_ids.shape[0], dtype=torch.int64, device=input_ids.device)
        pooled = x.flatten(0, 1)[rows * length + eot_index]  # a plain 1-D Gather
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection


class HeadGraph(nn.Module):
    """(image_embeds [B,D], text_embeds [B,D]) -> (logits [B,C], probs [B,C] = softmax(logits))."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(image_embeds, text_embeds)
        return logits, torch.softmax(logits, dim=-1)


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: how to build its torch module, its I/O and its parity gate per precision."""

    name: str
    factory: Callable[..., nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx `dynamic_axes`: every B and L dim of every input and output."""
        return {
            t.name: {i: str(d) for i, d in enumerate(t.shape) if d in DYNAMIC_DIMS}
            for t in (*self.inputs, *self.outputs)
        }

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances[precision]

    def io_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


_EMBED_GATE = {
    "fp32": Tolerance(min_cosine=0.99999),
    "fp16": Tolerance(min_cosine=0.999),
    "int8": Tolerance(min_cosine=0.999),
}
_HEAD_GATE = {
    "fp32": Tolerance(max_abs=1e-4, min_top1=1.0),
    "fp16": Tolerance(min_top1=0.99),
    "int8": Tolerance(min_top1=0.99),
}

GRAPHS: dict[str, GraphSpec] = {
    "image_encoder": GraphSpec(
        name="image_encoder",
        factory=lambda clip_model, **_: ImageEncoderGraph(clip_model),
        inputs=(TensorSpec("pixel_values", "float32", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("image_embeds", "float32", ("B", "D")),),
        tolerances=dict(_EMBED_GATE),
    ),
    "text_encoder": GraphSpec(
        name="text_encoder",
        factory=lambda clip_model, eot_token_id, **_: TextEncoderGraph(clip_model, eot_token_id),
        inputs=(TensorSpec("input_ids", "int64", ("B", "L")),),
        outputs=(TensorSpec("text_embeds", "float32", ("B", "D")),),
        tolerances=dict(_EMBED_GATE),
    ),
    "head": GraphSpec(
        name="head",
        factory=lambda head, **_: HeadGraph(head),
        inputs=(
            TensorSpec("image_embeds", "float32", ("B", "D")),
            TensorSpec("text_embeds", "float32", ("B", "D")),
        ),
        outputs=(TensorSpec("logits", "float32", ("B", "C")), TensorSpec("probs", "float32", ("B", "C"))),
        tolerances=dict(_HEAD_GATE),
    ),
}

# The end-to-end gate (image enc -> text enc -> head, compared on logits).
END_TO_END: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_top1=1.0),
    "fp16": Tolerance(min_top1=0.99),
    "int8": Tolerance(min_top1=0.99),
}


def build_graph_module(name: str, clip_model: nn.Module, head: nn.Module, eot_token_id: int) -> nn.Module:
    """The eval-mode torch module of graph `name`."""
    return GRAPHS[name].factory(clip_model=clip_model, head=head, eot_token_id=eot_token_id).eval()
