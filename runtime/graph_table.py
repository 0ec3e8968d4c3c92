"""The graph table: every exported graph's I/O, dynamic axes and parity tolerances, declared once.

The one place that names graphs and tensors. Export builds the graphs from it (`crisis_tool.export.graphs`
holds the torch modules), the manifest records it, the backends and bench read it, and a bundle's graphs are
checked against it when a backend loads them (`check_signature`).
Embeddings are OpenCLIP's unnormalised `encode_image` / `encode_text` outputs (what the heads are trained on).
Symbolic dims: B batch (dynamic), L text length (dynamic, 1..context_length), H/W image size, D embed dim,
C number of classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crisis_tool.runtime.errors import BundleError

PRECISIONS = ("fp32", "fp16", "int8")
DYNAMIC_DIMS = ("B", "L")
FIXED_DIMS = ("H", "W", "D", "C")

IMAGE_ENCODER, TEXT_ENCODER, HEAD = "image_encoder", "text_encoder", "head"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name and symbolic shape."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def sizes(self, dims: Mapping[str, int]) -> tuple[int | None, ...]:
        """Concrete size per axis: fixed dims from `dims`, None for the dynamic B and L."""
        return tuple(d if isinstance(d, int) else None if d in DYNAMIC_DIMS else int(dims[d]) for d in self.shape)


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

    def io_dict(self) -> dict[str, Any]:
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
    IMAGE_ENCODER: GraphSpec(
        name=IMAGE_ENCODER,
        inputs=(TensorSpec("pixel_values", "float32", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("image_embeds", "float32", ("B", "D")),),
        tolerances=dict(_EMBED_GATE),
    ),
    TEXT_ENCODER: GraphSpec(
        name=TEXT_ENCODER,
        inputs=(TensorSpec("input_ids", "int64", ("B", "L")),),
        outputs=(TensorSpec("text_embeds", "float32", ("B", "D")),),
        tolerances=dict(_EMBED_GATE),
    ),
    HEAD: GraphSpec(
        name=HEAD,
        inputs=(
            TensorSpec("image_embeds", "float32", ("B", "D")),
            TensorSpec("text_embeds", "float32", ("B", "D")),
        ),
        outputs=(TensorSpec("logits", "float32", ("B", "C")), TensorSpec("probs", "float32", ("B", "C"))),
        tolerances=dict(_HEAD_GATE),
    ),
}
GRAPH_NAMES: tuple[str, ...] = tuple(GRAPHS)

# The end-to-end gate (image enc -> text enc -> head, compared on logits).
END_TO_END: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_top1=1.0),
    "fp16": Tolerance(min_top1=0.99),
    "int8": Tolerance(min_top1=0.99),
}

# One tensor as a loaded graph reports it: (name, shape with ints for fixed axes, str/None/-1 for dynamic ones).
Signature = Sequence[tuple[str, Sequence[Any]]]


def check_signature(graph: str, inputs: Signature, outputs: Signature, dims: Mapping[str, int], where: str) -> None:
    """BundleError unless a loaded graph's input/output names, ranks and fixed widths match the table.

    `dims` gives the fixed sizes (H, W, D, C) of this bundle; an axis the graph leaves dynamic is accepted.
    """
    spec = GRAPHS[graph]
    for kind, got, want in (("inputs", inputs, spec.inputs), ("outputs", outputs, spec.outputs)):
        names = [name for name, _ in got]
        if names != [t.name for t in want]:
            raise BundleError(f"{where}: {graph} graph {kind} are {names}, expected {[t.name for t in want]}")
        for (name, shape), tensor in zip(got, want, strict=True):
            expected = tensor.sizes(dims)
            if len(shape) != len(expected):
                raise BundleError(f"{where}: {graph} tensor {name} has rank {len(shape)}, expected {len(expected)}")
            for axis, (size, wanted) in enumerate(zip(shape, expected, strict=True)):
                if wanted is not None and isinstance(size, int) and size >= 0 and size != wanted:
                    raise BundleError(
                        f"{where}: {graph} tensor {name} axis {axis} is {size}, expected {wanted}"
                    )
