"""TensorRT precision that stays right: gated Q/DQ graphs before the builder, gated engines after it.

The reference is the bundle's fp32 ONNX graphs in onnxruntime on the CPU (they passed the fp32 gate against
PyTorch at export); the inputs are `--calib-data` records or, said loudly, generated ones (see
`crisis_tool.export.calibration`). Before an int8 engine is built, its Q/DQ graph must pass the int8 gate in
onnxruntime; when it does not, the weight nodes that hurt most are left unquantized one at a time, and when
none can be quantized the engine is built without Q/DQ (fp16). After building, every engine runs on the same
inputs through the runtime's TensorRT plumbing and is held to the same gate as its ONNX graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.export.calibration import CalibrationSpec, GateData, calibration_feeds, gate_data_for
from crisis_tool.export.validate import (
    ParityCase,
    check_graph,
    check_runner,
    graph_spec,
    reference_cases,
    session_runner,
    validation_batches,
)
from crisis_tool.runtime.backends.base import head_feeds
from crisis_tool.runtime.model_spec import IMAGE_GRAPH, TEXT_GRAPH, ModelSpec


class OnnxReference:
    """The bundle's fp32 graphs in onnxruntime, with the Backend methods `reference_cases` calls."""

    def __init__(self, spec: ModelSpec, paths: dict[str, Path]) -> None:
        self.spec = spec
        self._run = {graph: session_runner(path) for graph, path in paths.items()}

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run[IMAGE_GRAPH.name](IMAGE_GRAPH.feeds(pixel_values))[0]

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run[TEXT_GRAPH.name](TEXT_GRAPH.feeds(input_ids))[0]

    def encode_text_outputs(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        graph = self.spec.text_graph
        return dict(zip(graph.output_names, self._run[graph.name](graph.feeds(input_ids)), strict=True))

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.run_head_outputs(image_embeds, text_embeds, task)
        return outputs["logits"], outputs["probs"]

    def run_head_outputs(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None,
                         extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        graph = (self.spec.head(task) if task else self.spec.heads[0]).graph_spec()
        outputs = self._run[graph.name](head_feeds(graph, image_embeds, text_embeds, extra))
        return dict(zip(graph.output_names, outputs, strict=True))


def bundle_gate_cases(model: ModelSpec, fp32_paths: dict[str, Path], spec: CalibrationSpec, *,
                      preprocess: dict[str, Any], tokenizer: Any, text_source: str, max_batch: int
                      ) -> tuple[GateData, list[ParityCase]]:
    """Gate inputs for a bundle's engines and the fp32 ONNX reference outputs on them."""
    data = gate_data_for(spec, preprocess=preprocess, tokenizer=tokenizer, text_source=text_source,
                         max_batch=max_batch, batches=validation_batches(max_batch))
    return data, reference_cases(OnnxReference(model, fp32_paths), data.batches, model)


def gated_qdq_graph(graph: str, src: Path, dst: Path, cases: list[ParityCase]
                    ) -> tuple[Path | None, dict[str, Any]]:
    """A TensorRT Q/DQ graph of `src` that passes the int8 gate in onnxruntime, or None; with its report.

    When the fully quantized graph fails, the residual-stream writers (attention output and MLP down
    projections, `residual_writers`) are left in float; if that fails too, weight nodes are ranked by how much
    quantizing each one alone costs and left in float, worst first, until the graph passes.
    """
    import onnx

    from crisis_tool.export.qdq import name_nodes, qdq_graph, residual_writers, weight_nodes

    feeds = calibration_feeds(graph, cases)
    model = onnx.load(str(src))
    name_nodes(model)
    nodes = weight_nodes(model)
    entry = _gate(graph, qdq_graph(src, dst, feeds, flavour="tensorrt"), cases)
    report: dict[str, Any] = {"quantized_nodes": len(nodes), "excluded": [], "first_try": _short(entry)}
    if entry["passed"]:
        return dst, {**entry, **report}
    writers = residual_writers(model)
    kept = [n for n in nodes if n not in writers]
    if writers and kept:
        entry = _gate(graph, qdq_graph(src, dst, feeds, flavour="tensorrt", nodes=kept), cases)
        report["residual_writers_in_float"] = _short(entry)
        if entry["passed"]:
            return dst, {**entry, **report, "excluded": writers, "quantized_nodes": len(kept),
                         "rule": "residual-stream writers left in float"}
    ranked = sorted(nodes, key=lambda node: -_alone(graph, src, dst, feeds, cases, node))
    excluded: list[str] = []
    for node in ranked:
        excluded.append(node)
        kept = [n for n in nodes if n not in excluded]
        if not kept:
            break
        entry = _gate(graph, qdq_graph(src, dst, feeds, flavour="tensorrt", nodes=kept), cases)
        if entry["passed"]:
            return dst, {**entry, **report, "excluded": excluded, "quantized_nodes": len(kept)}
    dst.unlink(missing_ok=True)
    return None, {**_short(entry), **report, "passed": False, "excluded": excluded, "quantized_nodes": 0}


def _gate(graph: str, path: Path, cases: list[ParityCase]) -> dict[str, Any]:
    from crisis_tool.export.qdq import scale_problems

    entry = check_graph(graph, path, cases, "int8")
    bad = scale_problems(path)
    if bad:
        entry = {**entry, "passed": False, "bad_scales": bad}
    return entry


def _alone(graph: str, src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], cases: list[ParityCase],
           node: str) -> float:
    """The gate's shortfall when only `node` is quantized (higher: hurts more)."""
    from crisis_tool.export.qdq import qdq_graph

    probe = dst.with_name(f"{dst.stem}.probe.onnx")
    entry = _gate(graph, qdq_graph(src, probe, feeds, flavour="tensorrt", nodes=[node]), cases[:2])
    probe.unlink(missing_ok=True)
    head = graph_spec(graph).is_head
    return 1.0 - float(entry.get("top1_agreement", entry["min_cosine"]) if head else entry["min_cosine"])


def _short(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("min_cosine", "top1_agreement", "top1_interval", "n", "passed", "bad_scales")
            if k in entry}


def engine_runner(trt: Any, cudart: Any, engine_path: Path) -> tuple[Any, Any]:
    """(runner feeds -> outputs in the engine's output order, close) through the runtime's TensorRT plumbing."""
    from crisis_tool.runtime.backends.tensorrt_backend import EngineRunner

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = EngineRunner(trt, cudart, runtime, Path(engine_path).read_bytes(), str(engine_path))

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = engine.run(feeds)
        return [out[name] for name in engine.outputs]

    return run, engine.close


def engine_parity(trt: Any, cudart: Any, graph: str, engine_path: Path, cases: list[ParityCase],
                  precision: str, max_batch: int) -> dict[str, Any]:
    """An engine's parity against the fp32 ONNX reference, held to its graph's gate for `precision`."""
    run, close = engine_runner(trt, cudart, engine_path)
    try:
        usable = [c for c in cases if c.batch <= max_batch]
        return check_runner(graph, run, usable, precision)
    finally:
        close()


def engine_gate_cases(bundle: Path, manifest: Any, spec: CalibrationSpec | None, max_batch: int
                      ) -> tuple[GateData, list[ParityCase]]:
    """Gate inputs and fp32 ONNX reference outputs for the engines of a bundle (a runtime Manifest)."""
    from crisis_tool.runtime.tokenizer import ClipTokenizer

    tok = manifest.tokenizer
    tokenizer = ClipTokenizer(bundle / tok.vocab_file, context_length=tok.context_length)
    fp32 = {graph: bundle / entry.file for graph, entry in manifest.graphs["fp32"].items()}
    return bundle_gate_cases(manifest.spec, fp32, spec or CalibrationSpec(), preprocess=dict(manifest.preprocess),
                             tokenizer=tokenizer, text_source=manifest.text_source, max_batch=max_batch)


def engine_source(graph: str, fp32_graph: Path, scratch: Path, precision: str, cases: list[ParityCase],
                  source: str) -> tuple[Path, str, dict[str, Any]]:
    """(ONNX graph to build from, precision to build at, report) for one engine.

    int8 builds from a gated Q/DQ graph; when no Q/DQ graph passes in onnxruntime, the engine is built fp16.
    """
    if precision != "int8":
        return fp32_graph, precision, {"built_as": precision, "calibration": source}
    qdq, report = gated_qdq_graph(graph, fp32_graph, scratch / f"{graph}.qdq.onnx", cases)
    qdq_report = {"qdq_onnxruntime": report, "calibration": source}
    if qdq is None:
        return fp32_graph, "fp16", {**qdq_report, "built_as": "fp16",
                                    "why": "no Q/DQ graph passed the int8 gate in onnxruntime"}
    return qdq, "int8", {**qdq_report, "built_as": "int8"}


def drop_failed_engines(bundle: Path, files: dict[str, list[str]], parity: dict[str, dict[str, Any]]
                        ) -> list[str]:
    """Delete the files of every engine whose parity failed (they are not deployable); their graph names."""
    failed = [graph for graph, entry in parity.items() if not entry.get("passed")]
    for graph in failed:
        for rel in files.get(graph, []):
            (bundle / rel).unlink(missing_ok=True)
    return failed


def failed_engines_message(bundle: Path, precision: str, parity: dict[str, dict[str, Any]], failed: list[str]
                           ) -> str:
    from crisis_tool.export.gate_report import failures

    detail = ", ".join(failures({f"trt-{precision}": {g: parity[g] for g in failed}}))
    return (f"TensorRT engine parity failed ({detail}); those engines were not written; every engine's parity "
            f"is in {bundle}/manifest.json under parity.trt-{precision}")
