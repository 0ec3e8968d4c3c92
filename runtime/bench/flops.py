"""Analytic FLOP count of an ONNX graph: MatMul / Gemm / Conv (and their int8 forms), 2 FLOPs per MAC.

The graph's dynamic input dims (B, L, ...) are pinned to concrete values, onnx shape inference (with data
propagation) gives tensor shapes; where it cannot resolve a contraction's shapes (the TorchScript exporter's
Shape->Gather->Concat->Reshape chains in attention often defeat it) the graph is run once with onnxruntime on
dummy inputs of the pinned shape and the real shapes are read back. Each contraction counts
2 * prod(output shape) * K. Attention's Q@K^T and P@V are plain MatMuls and are
counted. Elementwise ops, softmax and norms are ignored (a few % of a transformer). Needs `onnx`, which the
lean install lacks: import this module lazily and treat ImportError as "FLOPs unknown".
"""

from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Any

import onnx
from onnx import shape_inference

_MATMULS = {"MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"}
_GEMMS = {"Gemm", "QGemm"}
_CONVS = {"Conv", "ConvInteger", "QLinearConv"}


class FlopCountError(ValueError):
    """A contraction whose shapes shape inference could not resolve."""


def _pin_inputs(model: onnx.ModelProto, dims: dict[str, int]) -> None:
    """Replace symbolic (or unknown) input dims by concrete values: by name from `dims`, else 1."""
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                size = int(dims.get(dim.dim_param, 1))
                dim.Clear()
                dim.dim_value = size


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Every known tensor shape (None when any dim is unknown)."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = [int(d.dim_value) for d in tensor.shape.dim if d.HasField("dim_value")]
        shapes[value.name] = tuple(dims) if len(dims) == len(tensor.shape.dim) else None
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _need(shapes: dict[str, Any], name: str, node: onnx.NodeProto) -> tuple[int, ...]:
    shape = shapes.get(name)
    if shape is None:
        raise FlopCountError(f"shape of {name!r} (input/output of {node.op_type} {node.name!r}) is unknown")
    return shape


def _node_flops(node: onnx.NodeProto, shapes: dict[str, Any]) -> int:
    op = node.op_type
    if op in _MATMULS:
        a = _need(shapes, node.input[0], node)
        out = _need(shapes, node.output[0], node)
        return 2 * prod(out) * a[-1]
    if op in _GEMMS:
        a = _need(shapes, node.input[0], node)
        out = _need(shapes, node.output[0], node)
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return 2 * prod(out) * k
    if op in _CONVS:
        weight_index = 3 if op == "QLinearConv" else 1
        w = _need(shapes, node.input[weight_index], node)
        out = _need(shapes, node.output[0], node)
        return 2 * prod(out) * prod(w[1:])  # w: [Cout, Cin/groups, kh, kw]
    return 0


def _has_contraction(graph: onnx.GraphProto) -> bool:
    return any(n.op_type in _MATMULS | _GEMMS | _CONVS for n in graph.node)


def _contraction_tensors(graph: onnx.GraphProto) -> list[str]:
    names = []
    for node in graph.node:
        if node.op_type in _MATMULS | _GEMMS | _CONVS:
            names += [n for n in node.input if n] + [node.output[0]]
        elif any(_has_contraction(attr.g) for attr in node.attribute if attr.HasField("g")):
            raise FlopCountError(f"contractions inside {node.op_type} {node.name!r} are not supported")
    return names


def _runtime_shapes(proto: onnx.ModelProto, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Real shapes of `names`: run the (input-pinned) graph once with onnxruntime on dummy inputs."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    model = onnx.ModelProto.FromString(proto.SerializeToString())
    outputs = {o.name for o in model.graph.output}
    initializers = {i.name for i in model.graph.initializer}
    extra = [n for n in dict.fromkeys(names) if n not in outputs and n not in initializers]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        dtype = np.int64 if "int64" in value.type else np.int32 if "int32" in value.type else np.float32
        feeds[value.name] = np.ones([int(d) for d in value.shape], dtype=dtype)
    wanted = [o.name for o in session.get_outputs()]
    return {n: tuple(int(d) for d in a.shape) for n, a in zip(wanted, session.run(wanted, feeds), strict=True)}


def count_flops(model: str | Path | onnx.ModelProto, dims: dict[str, int] | None = None) -> int:
    """FLOPs (2 x MACs) of one run of `model` with its symbolic input dims set from `dims` (default 1).

    Raises FlopCountError when a contraction's shape cannot be found.
    """
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never touch the caller's model
    _pin_inputs(proto, dims or {})
    inferred = shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    shapes = _shapes(inferred)
    needed = _contraction_tensors(inferred.graph)
    if any(shapes.get(n) is None for n in needed):
        try:
            shapes.update(_runtime_shapes(proto, needed))
        except ImportError:
            pass  # no onnxruntime: _need() names the unresolved tensor
    return sum(_node_flops(node, shapes) for node in inferred.graph.node)
