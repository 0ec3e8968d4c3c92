"""OpenVINO backend: runs the bundle's ONNX graphs with OpenVINO (`pip install 'crisis-tool[openvino]'`).

OpenVINO reads the ONNX files directly; the dynamic batch and text-length axes of the graphs stay dynamic.

Precisions name an execution mode, each a (bundle graphs, OpenVINO inference precision) pair:

    fp32   fp32 graphs, computed in f32          (held to the fp32 gate)
    bf16   fp32 graphs, computed in bf16         (CPUs with bf16: AVX512_BF16 / AMX; reduced-precision gate)
    fp16   fp16 graphs, computed in f32
    int8   int8 graphs (dynamic or Q/DQ), the non-quantized ops in f32

Options (`create_backend(..., **options)`): `device` CPU (default), GPU, NPU or AUTO; `threads` (CPU inference
threads); `inference_precision` f32|bf16|f16, which overrides the second half of the pair (e.g. int8 graphs
with bf16 for the rest). The device(s) really executing are read back from the compiled model and reported as
`.provider` (for AUTO, the device it chose), as onnxruntime reports its providers. Thread-safe: each call takes
an InferRequest from a per-graph pool (created on demand), so concurrent calls never share one. Warm start:
compiled models are cached in the user cache (`openvino/`, OpenVINO's CACHE_DIR, keyed by model, device and
config; `CRISIS_TOOL_CACHE_DIR=off` turns it off).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.backends.base import Backend, head_feeds, reject_options
from crisis_tool.runtime.backends.peak_probe import PeakProbe, openvino_probe
from crisis_tool.runtime.backends.user_cache import cache_dir
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError, MissingDependencyError, UsageError
from crisis_tool.runtime.model_spec import IMAGE_ENCODER, IMAGE_GRAPH, TEXT_GRAPH, GraphSpec, check_signature

# precision -> (bundle graph precision, OpenVINO INFERENCE_PRECISION_HINT)
PRECISION_MODES: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "f32"),
    "bf16": ("fp32", "bf16"),
    "fp16": ("fp16", "f32"),
    "int8": ("int8", "f32"),
}
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
DEVICES = ("CPU", "GPU", "NPU", "AUTO")
_INSTALL_HINT = "pip install 'crisis-tool[openvino]'"


def _import_openvino() -> Any:
    """The `openvino` module, or MissingDependencyError with one line."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(f"the openvino backend needs OpenVINO ({_INSTALL_HINT})") from None
    return openvino


def check_device(core: Any, device: str) -> str:
    """The device name, upper-cased; UsageError for an unknown one, MissingDependencyError for an absent one."""
    name = device.strip().upper()
    family = name.split(".")[0]
    if family not in DEVICES or (family == "AUTO" and name != "AUTO"):
        raise UsageError(f"unknown OpenVINO device {device!r} (choose from {', '.join(DEVICES)})")
    available = list(core.available_devices)
    families = {d.split(".")[0] for d in available}
    if name != "AUTO" and name not in available and not (name == family and name in families):
        raise MissingDependencyError(
            f"OpenVINO device {name} is not available on this machine (available: {', '.join(available) or 'none'})"
        )
    return name


def has_bf16(core: Any, device: str) -> bool:
    """True when `device` (for AUTO: every device it may pick) reports the BF16 optimization capability."""
    devices = list(core.available_devices) if device == "AUTO" else [device]
    return bool(devices) and all("BF16" in core.get_property(d, "OPTIMIZATION_CAPABILITIES") for d in devices)


def _signature(ports: Any) -> list[tuple[str, list[int | None]]]:
    """(name, shape) per port, None for a dynamic axis, as `check_signature` takes them."""
    return [
        (port.get_any_name(), [d.get_length() if d.is_static else None for d in port.get_partial_shape()])
        for port in ports
    ]


def _message(exc: Exception) -> str:
    """The first line of an OpenVINO error that says something (not an "Exception from src/...:N:" line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith("Exception from")), type(exc).__name__)


class _CompiledGraph:
    """One compiled graph with a pool of idle InferRequests; `run` may be called from several threads."""

    def __init__(self, compiled: Any, spec: GraphSpec) -> None:
        self.compiled = compiled
        self.input_names = spec.input_names
        self.output_names = spec.output_names
        self.dtypes = {n: np.dtype(compiled.input(n).get_element_type().to_dtype()) for n in self.input_names}
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            request = self._idle.pop() if self._idle else self.compiled.create_infer_request()
        try:
            inputs = {n: np.ascontiguousarray(feeds[n], dtype=self.dtypes[n]) for n in self.input_names}
            results = request.infer(inputs)
            # Copy out: the request's output tensors are reused by its next call.
            return {n: np.array(results[n], dtype=np.float32) for n in self.output_names}
        finally:
            with self._lock:
                self._idle.append(request)


class OpenVinoBackend(Backend):
    """Runs the bundle's ONNX graphs with OpenVINO on `device`, in one of `PRECISION_MODES`."""

    name = "openvino"

    def __init__(
        self,
        bundle: Bundle,
        precision: str | None = None,
        device: str = "CPU",
        threads: int | None = None,
        inference_precision: str | None = None,
    ) -> None:
        ov = _import_openvino()
        self.precision = precision or bundle.precision
        if self.precision not in PRECISION_MODES:
            raise UsageError(
                f"openvino precision {self.precision!r}: choose from {', '.join(PRECISION_MODES)}"
            )
        self.graph_precision, default_hint = PRECISION_MODES[self.precision]
        missing = self.bundle_unavailable_reason(bundle, self.precision)
        if missing:
            raise UsageError(f"{bundle.root}: {missing}")
        hint = inference_precision or default_hint
        if hint not in INFERENCE_PRECISIONS:
            raise UsageError(f"inference_precision {hint!r}: choose from {', '.join(INFERENCE_PRECISIONS)}")
        if threads is not None and int(threads) < 1:
            raise UsageError("threads must be >= 1")
        core = ov.Core()
        self.device = check_device(core, device)
        if hint == "bf16" and not has_bf16(core, self.device):
            where = "machine" if self.device == "AUTO" else self.device
            raise MissingDependencyError(f"no bf16 on this {where} (OpenVINO reports no BF16 capability)")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint}
        if threads and self.device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled_cache = cache_dir("openvino")
        if compiled_cache is not None:  # warm start: OpenVINO keys its blobs by model, device and config
            config["CACHE_DIR"] = str(compiled_cache)
        self.spec = bundle.spec
        self._paths = {graph: bundle.graph_path_or_fp32(graph, self.graph_precision)
                       for graph in self.spec.graph_names}
        self._graphs: dict[str, _CompiledGraph] = {}
        for graph, path in self._paths.items():
            try:  # OpenVINO's errors are RuntimeErrors whose first lines are "Exception from file:line"
                model = core.read_model(str(path))
            except RuntimeError as exc:
                raise BundleError(f"{path}: OpenVINO cannot read this graph ({_message(exc)})") from exc
            graph_spec = self.spec.graph(graph)
            check_signature(graph_spec, _signature(model.inputs), _signature(model.outputs), bundle.dims, str(path))
            try:
                compiled = core.compile_model(model, self.device, config)
            except RuntimeError as exc:  # e.g. a GPU plugin without its driver, an op the device lacks
                raise MissingDependencyError(
                    f"{path}: OpenVINO cannot compile this graph for {self.device} ({_message(exc)})"
                ) from exc
            self._graphs[graph] = _CompiledGraph(compiled, graph_spec)
        first = self._graphs[IMAGE_ENCODER].compiled
        self.execution_devices = [str(d) for d in first.get_property("EXECUTION_DEVICES")]
        self.provider = ",".join(self.execution_devices) or self.device
        self.inference_precision = self._read_back_precision(first, hint)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _import_openvino()
        except MissingDependencyError as exc:
            return str(exc)
        return None

    @classmethod
    def bundle_unavailable_reason(cls, bundle: Bundle, precision: str) -> str | None:
        if precision not in PRECISION_MODES:
            return f"openvino has no {precision} mode (has {', '.join(PRECISION_MODES)})"
        graphs = PRECISION_MODES[precision][0]
        return None if bundle.has_graphs(graphs) else (
            f"bundle has no {graphs} graphs (has {', '.join(bundle.precisions())})"
        )

    @classmethod
    def from_bundle(cls, bundle: Bundle, precision: str | None = None, threads: int | None = None,
                    device: str | None = None, inference_precision: str | None = None,
                    **options: Any) -> OpenVinoBackend:
        """Options: `device` (CPU|GPU|NPU|AUTO, default CPU), `threads`, `inference_precision` (f32|bf16|f16)."""
        reject_options(cls.name, options)
        return cls(bundle, precision, device or "CPU", threads, inference_precision)

    @staticmethod
    def _read_back_precision(compiled: Any, requested: str) -> str:
        """The inference precision the device reports for the compiled graph (AUTO reports none: `requested`)."""
        try:
            return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        except RuntimeError:
            return requested

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        out = self._graphs[IMAGE_GRAPH.name].run(IMAGE_GRAPH.feeds(pixel_values))
        return out[IMAGE_GRAPH.output_names[0]]

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        out = self._graphs[TEXT_GRAPH.name].run(TEXT_GRAPH.feeds(input_ids))
        return out[TEXT_GRAPH.output_names[0]]

    def encode_text_outputs(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        return self._graphs[TEXT_GRAPH.name].run(TEXT_GRAPH.feeds(input_ids))

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        graph = (self.spec.head(task) if task else self.spec.heads[0]).graph_spec()
        out = self._graphs[graph.name].run(head_feeds(graph, image_embeds, text_embeds))
        logits_name, probs_name = graph.output_names[:2]
        return out[logits_name], out[probs_name]

    def run_head_outputs(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None,
                         extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        graph = (self.spec.head(task) if task else self.spec.heads[0]).graph_spec()
        return self._graphs[graph.name].run(head_feeds(graph, image_embeds, text_embeds, extra))

    def files(self) -> list[Path]:
        return sorted(set(self._paths.values()))

    def peak_probe(self) -> PeakProbe | None:
        compiled = self._graphs[IMAGE_ENCODER].compiled  # its device, inference precision and threads
        return openvino_probe(_import_openvino().Core(), compiled, self.device, self.graph_precision == "int8")

    def close(self) -> None:
        self._graphs.clear()

    def describe(self) -> str:
        mode = f"{self.graph_precision} graphs in {self.inference_precision}"
        return f"{self.name} ({self.precision}: {mode}, {self.provider})"
