"""Explicitly quantized (Q/DQ) graphs: static int8 on the weight-bearing ops only, calibrated on given feeds.

Only MatMul / Gemm / Conv nodes whose weight is an initializer are quantized (the transformer's projections and
MLPs, the patch embedding, the head's linear layers). Everything else stays float: the attention mask, its
Cast and Add, the EOT index and Gather, Shape / Slice / Range subgraphs, attention score products, softmax
and norms. Quantizing "every op", as before, put infinite scales on the mask's Cast outputs (their range
includes -inf) and wrecked the text encoder (cosine 0.14 to fp32 on a tiny bundle).

Two flavours: `tensorrt` (int8 activations and weights, both symmetric, per-channel weights: what TensorRT's
explicit quantization expects) and `cpu` (uint8 activations with int8 per-channel weights: onnxruntime's
fast U8S8 kernels, with 7-bit weights: on AVX2 CPUs without VNNI the kernel sums pairs of u8 x s8 products in
int16, which saturates with 8-bit weights; measured here on an AMD EPYC AVX2 VM, it cost the tiny image encoder
its gate). `rowwise_int8_graph` quantizes activations per row instead, with no calibration.
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
                reduce_range=not tensorrt,  # 7-bit weights: u8 x s8 pairs saturate int16 on AVX2 without VNNI
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


ROWWISE_LEVELS = 255.0
# 7-bit weights: AVX2 CPUs without VNNI sum pairs of u8 x s8 products in int16 (vpmaddubsw), which saturates above
# 2 x 255 x 64; onnxruntime's `reduce_range` does the same. VNNI / AMX would not need it.
ROWWISE_WEIGHT_LEVELS = 63.0


def rowwise_int8_graph(src: Path, dst: Path, nodes: list[str] | None = None) -> Path:
    """An int8 copy of `src` at `dst` whose activation scales are computed per row (per token), never per batch.

    Each chosen weight MatMul `X @ W` becomes, per row of X: lo = min(X, 0), hi = max(X, 0), s = (hi - lo) / 255,
    z = round(-lo / s); `A = clip(round(X / s) + z, 0, 255)` as uint8; `(MatMulInteger(A, W_int8) - z * colsum(W_int8))
    * s * w_scale` with 7-bit per-column weights (onnxruntime's U8S8 kernel). Every row is quantized from its own
    values only, so a record's answer is the same alone or in any batch (unlike onnxruntime's dynamic
    quantization, whose one scale per tensor couples the batch), with the full 8 bits of each row's own range and
    no calibration. `nodes`: weight MatMul names (default: every 2-D weight MatMul of `weight_nodes`).
    """
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    name_nodes(model)
    inits = {init.name: init for init in model.graph.initializer}
    wanted = set(weight_nodes(model) if nodes is None else nodes)
    shared = {"rw_levels": np.float32(ROWWISE_LEVELS), "rw_eps": np.float32(1e-12), "rw_zero": np.float32(0.0),
              "rw_top": np.float32(255.0)}
    new_inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in shared.items()]
    out_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        weight = numpy_helper.to_array(inits[node.input[1]]) if (
            node.op_type == "MatMul" and node.name in wanted and node.input[1] in inits) else None
        if weight is None or weight.ndim != 2:
            out_nodes.append(node)
            continue
        weight = weight.astype(np.float32)
        scale_w = np.maximum(np.abs(weight).max(axis=0), 1e-12) / ROWWISE_WEIGHT_LEVELS
        w_int8 = np.clip(np.round(weight / scale_w), -ROWWISE_WEIGHT_LEVELS, ROWWISE_WEIGHT_LEVELS).astype(np.int8)
        p, x = node.name, node.input[0]
        new_inits += [numpy_helper.from_array(w_int8, f"{p}_w_int8"),
                      numpy_helper.from_array(scale_w.astype(np.float32), f"{p}_w_scale"),
                      numpy_helper.from_array(w_int8.astype(np.float32).sum(axis=0), f"{p}_w_colsum")]

        def op(kind: str, inputs: list[str], out: str, **attrs: Any) -> onnx.NodeProto:
            return helper.make_node(kind, inputs, [out], name=out, **attrs)

        out_nodes += [
            op("ReduceMin", [x], f"{p}_min", axes=[-1], keepdims=1),
            op("ReduceMax", [x], f"{p}_max", axes=[-1], keepdims=1),
            op("Min", [f"{p}_min", "rw_zero"], f"{p}_lo"),
            op("Max", [f"{p}_max", "rw_zero"], f"{p}_hi"),
            op("Sub", [f"{p}_hi", f"{p}_lo"], f"{p}_range"),
            op("Div", [f"{p}_range", "rw_levels"], f"{p}_s0"),
            op("Max", [f"{p}_s0", "rw_eps"], f"{p}_scale"),
            op("Div", [f"{p}_lo", f"{p}_scale"], f"{p}_z0"),
            op("Round", [f"{p}_z0"], f"{p}_z1"),
            op("Neg", [f"{p}_z1"], f"{p}_zp"),
            op("Div", [x, f"{p}_scale"], f"{p}_xs"),
            op("Round", [f"{p}_xs"], f"{p}_xr"),
            op("Add", [f"{p}_xr", f"{p}_zp"], f"{p}_xz"),
            op("Clip", [f"{p}_xz", "rw_zero", "rw_top"], f"{p}_xc"),
            op("Cast", [f"{p}_xc"], f"{p}_xu8", to=TensorProto.UINT8),
            op("MatMulInteger", [f"{p}_xu8", f"{p}_w_int8"], f"{p}_acc"),
            op("Cast", [f"{p}_acc"], f"{p}_accf", to=TensorProto.FLOAT),
            op("Mul", [f"{p}_zp", f"{p}_w_colsum"], f"{p}_zcorr"),
            op("Sub", [f"{p}_accf", f"{p}_zcorr"], f"{p}_centred"),
            op("Mul", [f"{p}_centred", f"{p}_scale"], f"{p}_rows"),
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
