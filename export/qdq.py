"""Explicitly quantized (Q/DQ) graphs: static int8 on the weight-bearing ops only, calibrated on given feeds.

Only MatMul / Gemm / Conv nodes whose weight is an initializer are quantized (the transformer's projections and
MLPs, the patch embedding, the head's linear layers). Everything else stays float: the attention mask, its
Cast and Add, the EOT index and Gather, Shape / Slice / Range subgraphs, attention score products, softmax
and norms. Quantizing "every op", as before, put infinite scales on the mask's Cast outputs (their range
includes -inf) and wrecked the text encoder (cosine 0.14 to fp32 on a tiny bundle).

Two flavours: `tensorrt` (int8 activations and weights, both symmetric, per-channel weights: what TensorRT's
explicit quantization expects) and `cpu` (uint8 activations with int8 per-channel weights: onnxruntime's
fast U8S8 kernels).
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx

QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Conv")
QDQ_FLAVOURS = ("tensorrt", "cpu")


def weight_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul / Gemm / Conv nodes whose second input (the weight) is an initializer."""
    inits = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OP_TYPES and len(node.input) > 1 and node.input[1] in inits]


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (quantization selects nodes by name)."""
    taken = {node.name for node in model.graph.node if node.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def qdq_graph(src: Path, dst: Path, feeds: list[dict[str, Any]], flavour: str = "tensorrt",
              nodes: list[str] | None = None) -> Path:
    """A Q/DQ copy of `src` at `dst`, calibrated (MinMax) on `feeds`; only `nodes` (default: every one of
    `weight_nodes`) are quantized."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if flavour not in QDQ_FLAVOURS:
        raise ValueError(f"unknown Q/DQ flavour {flavour!r}")
    model = onnx.load(str(src))
    name_nodes(model)
    allowed = set(weight_nodes(model))
    nodes = [n for n in (allowed if nodes is None else nodes) if n in allowed]
    reader = type("Reader", (_FeedReader, CalibrationDataReader), {})(feeds)
    tensorrt = flavour == "tensorrt"
    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as scratch:
        named = Path(scratch) / "named.onnx"
        onnx.save(model, str(named))
        with _quiet():
            quantize_static(
                str(named), str(dst), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                nodes_to_quantize=nodes,
                per_channel=True,
                activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": tensorrt, "WeightSymmetric": True,
                               "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)},
            )
    return Path(dst)


def scale_problems(path: Path) -> list[str]:
    """Names of Q/DQ scale initializers that are not finite and positive (an unusable quantization)."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
                bad.append(node.input[1])
    return sorted(set(bad))


class _quiet:
    """Silence the quantizer's stdout/stderr chatter, root-logger hints and numpy warnings."""

    def __enter__(self) -> None:
        self._root = logging.getLogger()
        self._level = self._root.level
        self._root.setLevel(logging.ERROR)
        self._err = np.seterr(all="ignore")
        self._out = redirect_stdout(io.StringIO())
        self._errs = redirect_stderr(io.StringIO())
        self._out.__enter__()
        self._errs.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._errs.__exit__(*exc)
        self._out.__exit__(*exc)
        np.seterr(**self._err)
        self._root.setLevel(self._level)
