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
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx

QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Conv")
QDQ_FLAVOURS = ("tensorrt", "cpu")
CALIBRATION_PERCENTILE = 99.999


def weight_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul / Gemm / Conv nodes whose second input (the weight) is an initializer."""
    inits = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OP_TYPES and len(node.input) > 1 and node.input[1] in inits]


def residual_writers(model: onnx.ModelProto) -> list[str]:
    """Weight nodes that write into the residual stream of a pre-norm transformer: their output (after at most
    one bias Add) is added to a tensor that also feeds a normalization (the stream `x` in `x + f(norm(x))`).
    These are the attention output and MLP down projections, whose inputs (attention context, GELU output)
    carry the widest activation ranges: leaving them in float is the first thing to try when a fully quantized
    graph fails its gate."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def feeds_a_norm(tensor: str) -> bool:
        return any(n.op_type in ("LayerNormalization", "ReduceMean") for n in consumers.get(tensor, []))

    def adds_to_stream(tensor: str, hops: int = 1) -> bool:
        for node in consumers.get(tensor, []):
            if node.op_type != "Add":
                continue
            if any(feeds_a_norm(other) for other in node.input if other != tensor):
                return True
            if hops and adds_to_stream(node.output[0], hops - 1):
                return True
        return False

    weights = set(weight_nodes(model))
    return [node.name for node in model.graph.node if node.name in weights and adds_to_stream(node.output[0])]


def uniform_feeds(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The feeds as single rows of one shape per input, which histogram calibration needs: integer id inputs
    (text) are zero-padded to the widest (the causal text tower pools at the end-of-text token, so padding
    after it changes nothing), and every batch is split into batch-1 feeds."""
    widths: dict[str, int] = {}
    for feed in feeds:
        for name, array in feed.items():
            if array.dtype.kind in "iu" and array.ndim == 2:
                widths[name] = max(widths.get(name, 0), array.shape[1])
    padded = [{name: np.pad(a, ((0, 0), (0, widths[name] - a.shape[1]))) if name in widths else a
               for name, a in feed.items()} for feed in feeds]
    return [{name: a[i : i + 1] for name, a in feed.items()}
            for feed in padded for i in range(len(next(iter(feed.values()))))]


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
    """A Q/DQ copy of `src` at `dst`, calibrated on `feeds`; only `nodes` (default: every one of `weight_nodes`)
    are quantized. For TensorRT (symmetric int8 activations) the ranges are the 99.999th percentile of each
    activation histogram, not its min/max, so one outlier does not cost every other value its resolution; the
    CPU flavour (asymmetric u8 activations, one of export's int8 candidates) keeps min/max."""
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
    if not nodes:  # onnxruntime reads an empty list as "quantize every node": nothing to quantize is a copy
        shutil.copyfile(src, dst)
        return Path(dst)
    tensorrt = flavour == "tensorrt"
    reader = type("Reader", (_FeedReader, CalibrationDataReader), {})(uniform_feeds(feeds) if tensorrt else feeds)
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
                calibrate_method=CalibrationMethod.Percentile if tensorrt else CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": tensorrt, "WeightSymmetric": True,
                               "CalibPercentile": CALIBRATION_PERCENTILE,
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


ROWWISE_LEVELS = 127.0


def rowwise_int8_graph(src: Path, dst: Path, nodes: list[str] | None = None) -> Path:
    """An int8 copy of `src` at `dst` whose activation scales are computed per row (per token), never per batch.

    Each chosen weight MatMul `X @ W` becomes: s = max(|X|, last axis) / 127 per row; `MatMulInteger(round(X / s)
    + 128 as uint8, W_int8, zero point 128)` (onnxruntime's U8S8 kernel) times s times the per-column weight
    scales. Every row is quantized from its own values only, so a record's answer is the same alone or in any
    batch (unlike onnxruntime's dynamic quantization, whose one scale per tensor couples the batch), and no
    calibration is needed. `nodes`: weight MatMul names (default: every one of `weight_nodes` that is a MatMul).
    """
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    name_nodes(model)
    inits = {init.name: init for init in model.graph.initializer}
    wanted = set(weight_nodes(model) if nodes is None else nodes)
    shared = {"rw_levels": np.float32(ROWWISE_LEVELS), "rw_eps": np.float32(1e-12), "rw_offset": np.float32(128.0)}
    new_inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in shared.items()]
    new_inits.append(numpy_helper.from_array(np.asarray(128, dtype=np.uint8), "rw_zero_point"))
    out_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name not in wanted or node.input[1] not in inits:
            out_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if weight.ndim != 2:
            out_nodes.append(node)
            continue
        scale_w = np.maximum(np.abs(weight).max(axis=0), 1e-12) / ROWWISE_LEVELS
        w_int8 = np.clip(np.round(weight / scale_w), -127, 127).astype(np.int8)
        p, x = node.name, node.input[0]
        new_inits += [numpy_helper.from_array(w_int8, f"{p}_w_int8"),
                      numpy_helper.from_array(scale_w.astype(np.float32), f"{p}_w_scale")]
        out_nodes += [
            helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_abs"),
            helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_max"], name=f"{p}_max", axes=[-1], keepdims=1),
            helper.make_node("Div", [f"{p}_max", "rw_levels"], [f"{p}_s0"], name=f"{p}_s0"),
            helper.make_node("Max", [f"{p}_s0", "rw_eps"], [f"{p}_scale"], name=f"{p}_scale"),
            helper.make_node("Div", [x, f"{p}_scale"], [f"{p}_xs"], name=f"{p}_xs"),
            helper.make_node("Round", [f"{p}_xs"], [f"{p}_xr"], name=f"{p}_xr"),
            helper.make_node("Add", [f"{p}_xr", "rw_offset"], [f"{p}_xo"], name=f"{p}_xo"),
            helper.make_node("Cast", [f"{p}_xo"], [f"{p}_xu8"], name=f"{p}_xu8", to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", [f"{p}_xu8", f"{p}_w_int8", "rw_zero_point"], [f"{p}_acc"],
                             name=f"{p}_mmi"),
            helper.make_node("Cast", [f"{p}_acc"], [f"{p}_accf"], name=f"{p}_accf", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_accf", f"{p}_scale"], [f"{p}_rows"], name=f"{p}_rows"),
            helper.make_node("Mul", [f"{p}_rows", f"{p}_w_scale"], [node.output[0]], name=f"{p}_cols"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(out_nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + [i for i in new_inits if i.name in used])
    onnx.save(model, str(dst))
    return Path(dst)
