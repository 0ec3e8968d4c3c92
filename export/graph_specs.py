"""The graph table: every exported graph's I/O, dynamic axes and parity tolerances, declared once.

Torch-free, so that building TensorRT engines from a bundle (`export --from-bundle`) works with the lean
install. The torch modules that produce these graphs live in `crisis_tool.export.graphs`.
Embeddings are OpenCLIP's unnormalised `encode_image` / `encode_text` outputs (what the heads are trained on).
Symbolic dims: B batch (dynamic), L text length (dynamic, 1..context_length), H/W image size, D embed dim,
C number of classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its I/O (names, dtypes, symbolic shapes) and its parity gate per precision."""

    name: str
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
        inputs=(TensorSpec("pixel_values", "float32", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("image_embeds", "float32", ("B", "D")),),
        tolerances=dict(_EMBED_GATE),
    ),
    "text_encoder": GraphSpec(
        name="text_encoder",
        inputs=(TensorSpec("input_ids", "int64", ("B", "L")),),
        outputs=(TensorSpec("text_embeds", "float32", ("B", "D")),),
        tolerances=dict(_EMBED_GATE),
    ),
    "head": GraphSpec(
        name="head",
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
