"""TensorRT 10 backend: runs the bundle's prebuilt engines (engines/ in the manifest) with cuda-python.

Engines are device specific: each manifest entry records trt_version, gpu_name and compute_capability, and an
engine built for another GPU or TensorRT version is refused (`engine_meta.check_engine_compat`) rather than
risking wrong results. Device memory is handled through cuda-python's runtime bindings (no torch): per
component one execution context, one CUDA stream and device buffers that grow to the largest batch seen.
Calls on one component are serialised with a lock (an execution context is not thread-safe).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.backends.base import Backend, head_feeds, reject_options
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError, MissingDependencyError, UsageError
from crisis_tool.runtime.file_guard import open_regular
from crisis_tool.runtime.model_spec import IMAGE_GRAPH, TEXT_GRAPH, GraphSpec

_INSTALL_HINT = "pip install 'crisis-tool[trt]' on a machine with an NVIDIA GPU"


def import_cudart() -> Any:
    """cuda-python's runtime bindings, or MissingDependencyError with one line."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise MissingDependencyError(f"the tensorrt backend needs cuda-python ({_INSTALL_HINT})") from None
    return cudart


def _import_trt() -> tuple[Any, Any]:
    """(tensorrt, cudart) or MissingDependencyError with one line."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(f"the tensorrt backend needs TensorRT 10 ({_INSTALL_HINT})") from None
    return trt, import_cudart()


def _check(cudart: Any, result: Any) -> Any:
    """Unpack a cuda-python call's (err, *values) result; MissingDependencyError on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = cudart.cudaGetErrorName(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise MissingDependencyError(f"CUDA error {name} (no usable NVIDIA GPU?)")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_identity(cudart: Any, device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of `device`: the one GPU probe (engine building uses it too)."""
    count = _check(cudart, cudart.cudaGetDeviceCount())
    if not count:
        raise MissingDependencyError("the tensorrt backend needs an NVIDIA GPU (none found)")
    props = _check(cudart, cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00").strip(), f"{props.major}.{props.minor}"


class EngineRunner:
    """One deserialised engine with its context, stream and growable device buffers (export's engine parity
    check runs engines through this too)."""

    def __init__(self, trt: Any, cudart: Any, runtime: Any, blob: bytes, label: str) -> None:
        self.trt, self.cudart = trt, cudart
        self.engine = runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BundleError(f"{label}: TensorRT could not deserialise this engine")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart, cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self.lock = threading.Lock()
        # CUDA events around the host-to-device copies: timed on the GPU, no extra synchronisation.
        self.h2d_start = _check(cudart, cudart.cudaEventCreate())
        self.h2d_end = _check(cudart, cudart.cudaEventCreate())
        self.h2d_seconds = 0.0

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                _check(self.cudart, self.cudart.cudaFree(ptr))
            ptr, cap = int(_check(self.cudart, self.cudart.cudaMalloc(max(nbytes, 1)))), max(nbytes, 1)
            self.buffers[name] = (ptr, cap)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self.lock:
            hosts = {}
            _check(cudart, cudart.cudaEventRecord(self.h2d_start, self.stream))
            for name in self.inputs:
                host = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
                hosts[name] = host
                self.context.set_input_shape(name, tuple(host.shape))
                ptr = self._buffer(name, host.nbytes)
                _check(cudart, cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self.stream))
                self.context.set_tensor_address(name, ptr)
            _check(cudart, cudart.cudaEventRecord(self.h2d_end, self.stream))
            results = {}
            for name in self.outputs:
                out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name])
                results[name] = out
                self.context.set_tensor_address(name, self._buffer(name, out.nbytes))
            if not self.context.execute_async_v3(self.stream):
                raise BundleError("TensorRT engine execution failed")
            for name, out in results.items():
                ptr = self.buffers[name][0]
                _check(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, self.stream))
            _check(cudart, cudart.cudaStreamSynchronize(self.stream))
            self.h2d_seconds += _check(cudart, cudart.cudaEventElapsedTime(self.h2d_start, self.h2d_end)) / 1e3
        return results

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()
        if self.stream is not None:
            self.cudart.cudaEventDestroy(self.h2d_start)
            self.cudart.cudaEventDestroy(self.h2d_end)
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


class TensorRTBackend(Backend):
    """Runs the bundle's TensorRT engines for `precision` (default: the bundle's precision)."""

    name = "tensorrt"

    def __init__(
        self, bundle: Bundle, precision: str | None = None, providers: Any = None, device: int = 0
    ) -> None:
        if providers:
            raise UsageError("--providers only applies to the onnxruntime backend")
        trt, cudart = _import_trt()
        from crisis_tool.runtime.engine_meta import check_engine_compat

        self.precision = precision or bundle.precision
        _check(cudart, cudart.cudaSetDevice(device))
        gpu_name, capability = gpu_identity(cudart, device)
        self.provider = f"TensorRT {trt.__version__} on {gpu_name}"
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines: dict[str, EngineRunner] = {}
        self.paths: list[Path] = []
        limits = []  # the engines' optimization-profile limits; the Predictor respects the smallest
        self.spec = bundle.spec
        for graph in self.spec.graph_names:
            entry = bundle.engine_entry(graph, self.precision)
            if entry is None:
                raise BundleError(
                    f"{bundle.root}: no {self.precision} TensorRT engine for {graph} "
                    f"(build one on this GPU: crisis-tool export --from-bundle {bundle.root} --format trt "
                    f"--precision {self.precision})"
                )
            check_engine_compat(entry.to_dict(), trt.__version__, gpu_name, capability, bundle=str(bundle.root))
            path = bundle.path(entry.file)
            if not path.exists():
                raise BundleError(f"{bundle.root}: missing engine file {entry.file}")
            with open_regular(path) as fh:  # a FIFO or device named as an engine is refused, never read
                blob = fh.read()
            self.engines[graph] = EngineRunner(trt, cudart, runtime, blob, str(path))
            self._check_names(self.spec.graph(graph), str(path))
            self.paths.append(path)
            if entry.profile_max_batch is not None:
                limits.append(entry.profile_max_batch)
        self.engine_batch_limit = min(limits) if limits else None

    def _check_names(self, spec: GraphSpec, where: str) -> None:
        """BundleError unless the engine's input and output names are the model spec's."""
        engine = self.engines[spec.name]
        if (engine.inputs, engine.outputs) != (spec.input_names, spec.output_names):
            raise BundleError(f"{where}: engine tensors {engine.inputs} -> {engine.outputs} are not the model "
                              f"spec's {spec.input_names} -> {spec.output_names}")

    @classmethod
    def bundle_unavailable_reason(cls, bundle: Bundle, precision: str) -> str | None:
        if bundle.manifest.engines.get(precision):
            return None
        return (f"bundle has no {precision} TensorRT engines "
                f"(crisis-tool export --from-bundle {bundle.root} --format trt --precision {precision})")

    @classmethod
    def from_bundle(cls, bundle: Bundle, precision: str | None = None, threads: int | None = None,
                    device: int | None = None, **options: Any) -> TensorRTBackend:
        reject_options(cls.name, options)
        return cls(bundle, precision, device=device or 0)

    def files(self) -> list[Path]:
        return list(self.paths)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when TensorRT, cuda-python and a GPU are present, else why not (one line)."""
        try:
            _, cudart = _import_trt()
            gpu_identity(cudart)
        except MissingDependencyError as exc:
            return str(exc)
        return None

    @property
    def h2d_seconds(self) -> float:
        """Total host-to-device copy time so far (GPU-timed), for bench's separate H2D column."""
        return sum(engine.h2d_seconds for engine in self.engines.values())

    def synchronize(self) -> None:
        """Every call already ends with a stream synchronisation; this also waits for the whole device."""
        if self.engines:
            engine = next(iter(self.engines.values()))
            _check(engine.cudart, engine.cudart.cudaDeviceSynchronize())

    def _run_one(self, spec: GraphSpec, *arrays: np.ndarray) -> list[np.ndarray]:
        return self._run_feeds(spec, spec.feeds(*arrays))

    def _run_feeds(self, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.engines[spec.name].run(feeds)
        return [out[name].astype(np.float32, copy=False) for name in spec.output_names]

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run_one(IMAGE_GRAPH, pixel_values)[0]

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run_one(TEXT_GRAPH, input_ids)[0]

    def encode_text_outputs(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        graph = self.spec.text_graph
        return dict(zip(graph.output_names, self._run_one(graph, input_ids), strict=True))

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        graph = (self.spec.head(task) if task else self.spec.heads[0]).graph_spec()
        logits, probs = self._run_feeds(graph, head_feeds(graph, image_embeds, text_embeds))[:2]
        return logits, probs

    def run_head_outputs(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None,
                         extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        graph = (self.spec.head(task) if task else self.spec.heads[0]).graph_spec()
        outputs = self._run_feeds(graph, head_feeds(graph, image_embeds, text_embeds, extra))
        return dict(zip(graph.output_names, outputs, strict=True))

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()
