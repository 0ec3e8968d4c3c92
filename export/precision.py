"""Reduced-precision ONNX variants: int8 (dynamic weight quantization) and fp16 (norms/softmax kept fp32).

`build_variant` makes a whole variant: per graph (int8 candidates are picked in
`crisis_tool.export.int8_candidates`), then end to end with the fp32 fallback (`crisis_tool.export.fallback`).
"""

from __future__ import annotations

import io
import logging
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import onnx

from crisis_tool.runtime.model_spec import ModelSpec

# Ops kept in fp32 in fp16 graphs: normalisation, softmax and the reductions / powers they are built from.
FP16_OP_BLOCK_LIST = (
    "LayerNormalization",
    "BatchNormalization",
    "Softmax",
    "Pow",
    "ReduceMean",
    "ReduceSum",
    "Sqrt",
    "Reciprocal",
    "Erf",
)


def quantize_int8(src: Path, dst: Path, weight_type: str) -> Path:
    """Dynamic int8 quantization of MatMul/Gemm (and Conv) weights; activations quantized at run time.

    `weight_type` is a QuantType name, optionally with "-per-channel" (one scale per output column: slower
    to build, closer to fp32); "fp32" copies the graph unquantized.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weight_type == "fp32":
        shutil.copyfile(src, dst)
        return Path(dst)
    base, _, variant = weight_type.partition("-")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            quantize_dynamic(str(src), str(dst), weight_type=getattr(QuantType, base),
                             per_channel=variant == "per-channel")
    finally:
        root.setLevel(level)
    return Path(dst)


def norm_division_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of Div nodes that divide by a Sqrt / Pow / ReduceMean result (hand-written norms)."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Div" and len(node.input) > 1
        and producers.get(node.input[1]) in {"Sqrt", "Pow", "ReduceMean"}
    ]


def float_cast_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of `Cast(to=FLOAT)` nodes: the converter would mislabel their output as fp16."""
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)
    ]


def inline_identity_initializers(model: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes (shared weights) by initializers of their own.

    The fp16 converter casts such a node's output to fp16 even when it feeds a blocked (fp32) op.
    """
    inits = {init.name: init for init in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            model.graph.node.remove(node)


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute with float32 inputs/outputs; norm, softmax and reductions stay fp32."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    inline_identity_initializers(model)
    # Its cast-pair clean-up pass crashes when an fp32 graph input feeds several nodes; it only removes
    # redundant Cast pairs, so skip it.
    with mock.patch.object(float16, "remove_unnecessary_cast_node", lambda graph: None):
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(FP16_OP_BLOCK_LIST),
            node_block_list=norm_division_nodes(model) + float_cast_nodes(model),
        )
    float_outputs(converted)
    onnx.save(converted, str(dst))
    return Path(dst)


def float_outputs(model: onnx.ModelProto) -> None:
    """Cast back to float32 every graph output the converter left fp16 (outputs of blocked ops and casts):
    a graph's outputs keep their fp32 types, so a head is fed what its declared inputs say."""
    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type != onnx.TensorProto.FLOAT16:
            continue
        inner = f"{output.name}_fp16"
        for node in model.graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        model.graph.node.append(onnx.helper.make_node("Cast", [inner], [output.name], name=f"{output.name}_to_fp32",
                                                      to=onnx.TensorProto.FLOAT))
        tensor_type.elem_type = onnx.TensorProto.FLOAT


def build_variant(spec: ModelSpec, precision: str, tmp: Path, fp32_paths: dict[str, Path], cases: list[Any],
                  calibrated: bool) -> tuple[dict[str, Path], dict[str, Any], bool | str]:
    """The int8 or fp16 graphs of every graph of `spec`, each gated on its own, then end to end (per head)
    with the fp32 fallback.

    Returns (paths kept per graph, parity report, validated). A graph that fails its own gate, or is dropped by
    the end-to-end fallback, stays fp32 (its path is the fp32 file; `chosen` and `why` say so).
    `calibrated`: real calibration records were given (enables the static Q/DQ int8 candidate).
    """
    from crisis_tool.export.calibration import calibration_feeds
    from crisis_tool.export.fallback import choose_combination
    from crisis_tool.export.gate_report import failures
    from crisis_tool.export.int8_candidates import pick_int8
    from crisis_tool.export.validate import RuntimeCannotRun, check_graph

    paths = {c: tmp / f"{c}.{precision}.onnx" for c in fp32_paths}
    report: dict[str, Any] = {}
    words = {h.graph for h in spec.heads if h.explain_tokens}
    try:
        for component, src in fp32_paths.items():
            graph = spec.graph(component)
            if precision == "int8" and component in words:  # a tiny head; its word inputs have no calibration
                report[component] = {**check_graph(graph, src, cases, "fp32"), "chosen": "fp32", "weight_type": "fp32",
                                     "why": "a head that weighs words (--explain) stays fp32"}
            elif precision == "int8":
                feeds = calibration_feeds(component, cases) if calibrated else None
                report[component] = pick_int8(component, src, paths[component], cases, feeds)
            else:
                convert_fp16(src, paths[component])
                entry = check_graph(graph, paths[component], cases, precision)
                report[component] = _fp16_choice(graph, src, entry, cases)
    except RuntimeCannotRun as exc:
        return paths, {}, f"not validated: {exc}"
    for component, entry in report.items():
        if entry["chosen"] == "fp32":
            paths[component].unlink(missing_ok=True)
            paths[component] = fp32_paths[component]
    kept, end_to_end = choose_combination(spec, precision, paths, fp32_paths, report, cases)
    report.update(end_to_end)
    for component, path in kept.items():
        if path == fp32_paths[component] and paths[component] != path:
            paths[component].unlink(missing_ok=True)  # dropped by the fallback: share the fp32 file
    return kept, report, not failures({precision: report})


def _fp16_choice(component: Any, src: Path, entry: dict[str, Any], cases: list[Any]) -> dict[str, Any]:
    """An fp16 graph's entry; one that fails its own gate stays fp32 (with the fp16 numbers recorded)."""
    from crisis_tool.export.validate import check_graph

    if entry["passed"]:
        return {**entry, "chosen": "fp16", "why": "passed its gate"}
    numbers = {k: entry[k] for k in ("min_cosine", "top1_agreement", "top1_interval", "n") if k in entry}
    kept = check_graph(component, src, cases, "fp32")
    return {**kept, "chosen": "fp32", "why": f"fp16 failed its gate: {numbers}",
            "candidates": {"fp16": {**numbers, "passed": False}}}
