"""The model spec: shared encoders and one named head per task, the one place that names graphs and tensors.

A bundle's spec is written into its manifest (and hashed with it). Export builds its graphs from it
(`crisis_tool.export.graphs` holds the torch modules), the gates and fallbacks iterate it, the backends open
one session per graph it lists, the Predictor runs every selected head on the shared embeddings, and bench
derives its workloads from it. Nothing else spells a graph or tensor name.

Embeddings are OpenCLIP's unnormalised `encode_image` / `encode_text` outputs (what the heads are trained on).
Symbolic dims: B batch (dynamic), L text length (dynamic, 1..context_length), H/W image size, D embed dim,
C the number of classes of a head.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from crisis_tool.runtime.errors import BundleError, UsageError

PRECISIONS = ("fp32", "fp16", "int8")
DYNAMIC_DIMS = ("B", "L")

IMAGE_ENCODER, TEXT_ENCODER = "image_encoder", "text_encoder"
ENCODERS = (IMAGE_ENCODER, TEXT_ENCODER)
LEGACY_HEAD_GRAPH = "head"  # the one head graph of a format-2 bundle
TASK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


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


EMBED_GATE = {
    "fp32": Tolerance(min_cosine=0.99999),
    "fp16": Tolerance(min_cosine=0.999),
    "int8": Tolerance(min_cosine=0.999),
}
HEAD_GATE = {
    "fp32": Tolerance(max_abs=1e-4, min_top1=1.0),
    "fp16": Tolerance(min_top1=0.99),
    "int8": Tolerance(min_top1=0.99),
}
# The end-to-end gate of each head (image enc -> text enc -> that head, compared on its logits).
END_TO_END: dict[str, Tolerance] = dict(HEAD_GATE)

PIXELS = TensorSpec("pixel_values", "float32", ("B", 3, "H", "W"))
INPUT_IDS = TensorSpec("input_ids", "int64", ("B", "L"))
IMAGE_EMBEDS = TensorSpec("image_embeds", "float32", ("B", "D"))
TEXT_EMBEDS = TensorSpec("text_embeds", "float32", ("B", "D"))
LOGITS = TensorSpec("logits", "float32", ("B", "C"))
PROBS = TensorSpec("probs", "float32", ("B", "C"))
MODALITY_SHARE = TensorSpec("modality_share", "float32", ("B", 2))  # --explain: (image, text), rows sum to 1
# --explain on a Differential Attention head: the text encoder also outputs every token's projected feature and
# which positions are words (not SOT/EOT/padding); the head weighs each word with its DiffAttn map.
TEXT_TOKEN_EMBEDS = TensorSpec("text_token_embeds", "float32", ("B", "L", "D"))
TOKEN_MASK = TensorSpec("token_mask", "float32", ("B", "L"))
TOKEN_WEIGHTS = TensorSpec("token_weights", "float32", ("B", "L"))
EXPLAIN_MAX_ABS = {"fp32": 1e-4, "fp16": 0.02, "int8": 0.02}  # the gate on modality_share and token_weights
EXPLAIN_OUTPUTS = ("modality_share", "token_weights")


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its role, I/O (names, dtypes, symbolic shapes) and parity gate per precision.

    `role` is "image", "text" or "head"; `task` names the head's task (None for the encoders).
    """

    name: str
    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    task: str | None = None
    classes: int | None = None

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def is_head(self) -> bool:
        return self.role == "head"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx `dynamic_axes`: every B and L dim of every input and output."""
        return {
            t.name: {i: str(d) for i, d in enumerate(t.shape) if d in DYNAMIC_DIMS}
            for t in (*self.inputs, *self.outputs)
        }

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances[precision]

    def dims(self, shared: Mapping[str, int]) -> dict[str, int]:
        """The fixed sizes of this graph's symbolic dims: the bundle's H, W, D (+ L) and this head's C."""
        return {**shared, **({"C": self.classes} if self.classes is not None else {})}

    def io_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    def feeds(self, *arrays: Any) -> dict[str, Any]:
        """{input name: array} for this graph's inputs, in declared order."""
        return dict(zip(self.input_names, arrays, strict=True))


IMAGE_GRAPH = GraphSpec(IMAGE_ENCODER, "image", (PIXELS,), (IMAGE_EMBEDS,), dict(EMBED_GATE))
TEXT_GRAPH = GraphSpec(TEXT_ENCODER, "text", (INPUT_IDS,), (TEXT_EMBEDS,), dict(EMBED_GATE))
TEXT_TOKENS_GRAPH = GraphSpec(TEXT_ENCODER, "text", (INPUT_IDS,), (TEXT_EMBEDS, TEXT_TOKEN_EMBEDS, TOKEN_MASK),
                              dict(EMBED_GATE))  # the text encoder of a bundle whose heads explain words


@dataclass(frozen=True)
class HeadSpec:
    """One task's head: its labels, graph, weights file and how its confidence is read (calibration, review)."""

    task: str
    labels: tuple[str, ...]
    graph: str
    weights: str
    temperature: float = 1.0
    review_threshold: float | None = None
    explain: bool = False  # the head graph also outputs modality_share (export --explain)
    explain_tokens: bool = False  # and token_weights over the post's words (--explain, DiffAttn heads)

    def graph_spec(self) -> GraphSpec:
        inputs: tuple[TensorSpec, ...] = (IMAGE_EMBEDS, TEXT_EMBEDS)
        outputs: tuple[TensorSpec, ...] = (LOGITS, PROBS)
        if self.explain:
            outputs += (MODALITY_SHARE,)
        if self.explain_tokens:
            inputs += (TEXT_TOKEN_EMBEDS, TOKEN_MASK)
            outputs += (TOKEN_WEIGHTS,)
        return GraphSpec(self.graph, "head", inputs, outputs, dict(HEAD_GATE), task=self.task,
                         classes=len(self.labels))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "labels": list(self.labels), "graph": self.graph,
                               "weights": self.weights, "temperature": self.temperature}
        if self.review_threshold is not None:
            out["review_threshold"] = self.review_threshold
        if self.explain:
            out["explain"] = True
        if self.explain_tokens:
            out["explain_tokens"] = True
        return out


def head_graph_name(task: str) -> str:
    return f"head_{task}"


def head_weights_name(task: str) -> str:
    return f"head_{task}.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    """Shared image and text encoders plus one or more named heads (one per task)."""

    heads: tuple[HeadSpec, ...]

    def __post_init__(self) -> None:
        if not self.heads:
            raise BundleError("a model spec needs at least one head")
        tasks = [h.task for h in self.heads]
        if len(set(tasks)) != len(tasks):
            raise BundleError(f"model spec names a task twice: {', '.join(tasks)}")

    @classmethod
    def for_tasks(cls, heads: Iterable[tuple[str, Sequence[str]]]) -> ModelSpec:
        """A spec with default graph and weight names for (task, labels) pairs (export time)."""
        return cls(tuple(HeadSpec(check_task_name(t), tuple(labels), head_graph_name(t), head_weights_name(t))
                         for t, labels in heads))

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(h.task for h in self.heads)

    def head(self, task: str) -> HeadSpec:
        for h in self.heads:
            if h.task == task:
                return h
        raise UsageError(f"unknown task {task!r}: this bundle has heads {', '.join(self.tasks)}")

    def select(self, tasks: str | Sequence[str] | None) -> tuple[HeadSpec, ...]:
        """The heads named by `--tasks a,b` (all when None or "all"); UsageError listing the heads otherwise."""
        if tasks is None:
            return self.heads
        names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
        names = [n for n in names if n]
        if not names or names == ["all"]:
            return self.heads
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise UsageError(f"--tasks {','.join(unknown)}: unknown; this bundle has heads {', '.join(self.tasks)}")
        return tuple(self.head(n) for n in dict.fromkeys(names))

    @property
    def text_graph(self) -> GraphSpec:
        """The text encoder: with token outputs when a head explains words (`HeadSpec.explain_tokens`)."""
        return TEXT_TOKENS_GRAPH if any(h.explain_tokens for h in self.heads) else TEXT_GRAPH

    def graphs(self) -> dict[str, GraphSpec]:
        """Every graph, in build order: the image encoder, the text encoder, then one head per task."""
        return {IMAGE_ENCODER: IMAGE_GRAPH, TEXT_ENCODER: self.text_graph,
                **{h.graph: h.graph_spec() for h in self.heads}}

    @property
    def graph_names(self) -> tuple[str, ...]:
        return tuple(self.graphs())

    def graph(self, name: str) -> GraphSpec:
        graphs = self.graphs()
        if name not in graphs:
            raise BundleError(f"unknown graph {name!r} (the spec has {', '.join(graphs)})")
        return graphs[name]

    def head_for_graph(self, graph: str) -> HeadSpec | None:
        return next((h for h in self.heads if h.graph == graph), None)

    def with_explain(self, word_tasks: Iterable[str] = ()) -> ModelSpec:
        """The same heads, each exporting its modality share (export --explain); those of `word_tasks` (heads
        with Differential Attention) also weigh the post's words."""
        words = set(word_tasks)
        return ModelSpec(tuple(replace(h, explain=True, explain_tokens=h.task in words) for h in self.heads))

    def with_calibration(self, task: str, temperature: float, review_threshold: float | None) -> ModelSpec:
        heads = tuple(replace(h, temperature=temperature, review_threshold=review_threshold) if h.task == task
                      else h for h in self.heads)
        return ModelSpec(heads)

    def to_dict(self) -> dict[str, Any]:
        return {"encoders": {IMAGE_ENCODER: IMAGE_GRAPH.io_dict(), TEXT_ENCODER: self.text_graph.io_dict()},
                "heads": [h.to_dict() for h in self.heads]}


def check_task_name(task: str) -> str:
    if not TASK_NAME.match(task):
        raise UsageError(f"task name {task!r} must be lower-case letters, digits or '_' (at most 32)")
    return task


# One tensor as a loaded graph reports it: (name, shape with ints for fixed axes, str/None/-1 for dynamic ones).
Signature = Sequence[tuple[str, Sequence[Any]]]


def check_signature(spec: GraphSpec, inputs: Signature, outputs: Signature, dims: Mapping[str, int],
                    where: str) -> None:
    """BundleError unless a loaded graph's input/output names, ranks and fixed widths match its spec.

    `dims` gives the bundle's fixed sizes (H, W, D); the head's C comes from its spec. An axis the graph leaves
    dynamic is accepted.
    """
    sizes = spec.dims(dims)
    for kind, got, want in (("inputs", inputs, spec.inputs), ("outputs", outputs, spec.outputs)):
        names = [name for name, _ in got]
        if names != [t.name for t in want]:
            raise BundleError(f"{where}: {spec.name} graph {kind} are {names}, expected {[t.name for t in want]}")
        for (name, shape), tensor in zip(got, want, strict=True):
            expected = tensor.sizes(sizes)
            if len(shape) != len(expected):
                raise BundleError(f"{where}: {spec.name} tensor {name} has rank {len(shape)}, expected "
                                  f"{len(expected)}")
            for axis, (size, wanted) in enumerate(zip(shape, expected, strict=True)):
                if wanted is not None and isinstance(size, int) and size >= 0 and size != wanted:
                    raise BundleError(f"{where}: {spec.name} tensor {name} axis {axis} is {size}, expected {wanted}")
