"""ONNX Runtime backend: one InferenceSession per bundle component, created once.

Providers are chosen by what actually works: TensorRT EP, then CUDA EP, then CPU (or `providers=[...]`).
onnxruntime-gpu lists TensorRT/CUDA as available even on a machine without a GPU and then quietly runs on CPU,
so the provider reported as `.provider` is always read back from `session.get_providers()`.

Warm start: on the CPU provider each graph's optimised model is saved once in the user cache
(`user_cache`, `onnxruntime/<graph sha256>-ort<version>-<cpu>.onnx`, written atomically) and later loads read
it with graph optimisation off. `CRISIS_TOOL_CACHE_DIR=off` turns this off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from crisis_tool.runtime.backends.base import Backend, head_feeds, reject_options
from crisis_tool.runtime.backends.peak_probe import PeakProbe, onnxruntime_probe
from crisis_tool.runtime.backends.user_cache import cache_dir, cpu_key, graph_digest
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError, UsageError
from crisis_tool.runtime.model_spec import IMAGE_GRAPH, TEXT_GRAPH, check_signature

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32}

SessionFactory = Callable[[str, Any, list[str]], Any]


def default_providers() -> list[str]:
    """The preferred providers this onnxruntime build offers (not necessarily usable here)."""
    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def _make_session(path: str, options: Any, providers: list[str]) -> Any:
    """InferenceSession with ORT's own fallback chatter (printed to stdout, logged to stderr) silenced."""
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return ort.InferenceSession(path, sess_options=options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)


def session_options(threads: int | None, optimize: bool = True, save_to: Path | None = None) -> Any:
    """The backend's SessionOptions: `threads` intra-op threads, full graph optimisation (or none, for a model
    that is already optimised), and `save_to`: where onnxruntime writes the optimised model."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return options


def _gpu_device_present() -> bool:
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvhost-ctrl", "/dev/dxg"))


def optimized_model_cache(requested: list[str], explicit: bool) -> Path | None:
    """The warm-start folder for optimised CPU models, or None: the cache is off, or a GPU provider may run
    (onnxruntime only saves optimised models that the CPU provider alone runs)."""
    cpu_only = requested == ["CPUExecutionProvider"] or (not explicit and not _gpu_device_present())
    return cache_dir("onnxruntime") if cpu_only else None


def cached_session(folder: Path, bundle: Bundle, path: Path, threads: int | None, providers: list[str]) -> Any:
    """A CPU session of `path` from its optimised copy in `folder` (keyed by the graph's sha256, onnxruntime's
    version and the CPU), made and saved atomically on the first load. Loading the saved copy skips graph
    optimisation: that is the warm start."""
    name = f"{graph_digest(bundle, path)[:32]}-ort{ort.__version__}-{cpu_key()}.onnx"
    saved = folder / name
    if saved.is_file():
        try:
            return _make_session(str(saved), session_options(threads, optimize=False), ["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - a damaged cache entry: rebuild it below
            saved.unlink(missing_ok=True)
    scratch = folder / f".{name}.{os.getpid()}.partial"
    try:
        session = _make_session(str(path), session_options(threads, save_to=scratch), providers)
        if list(session.get_providers()) == ["CPUExecutionProvider"] and scratch.is_file():
            os.replace(scratch, saved)
        return session
    finally:
        scratch.unlink(missing_ok=True)


class OnnxRuntimeBackend(Backend):
    """Runs the bundle's ONNX graphs with ONNX Runtime; thread-safe (InferenceSession.run is)."""

    name = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        precision: str | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.precision = precision or bundle.precision
        if not bundle.has_graphs(self.precision):
            raise UsageError(
                f"bundle {bundle.root} has no {self.precision} graphs (has {', '.join(bundle.precisions())})"
            )
        requested = list(providers) if providers else default_providers()
        known = set(ort.get_all_providers())
        unknown = [p for p in requested if p not in known]
        if unknown:
            raise UsageError(f"unknown onnxruntime provider(s) {', '.join(unknown)}")
        self.requested_providers = requested
        self.threads = threads
        options = session_options(threads)
        cache = optimized_model_cache(requested, bool(providers)) if session_factory is None else None
        factory = session_factory or _make_session
        self.sessions: dict[str, Any] = {}
        active = requested
        self.spec = bundle.spec
        self.paths = {graph: bundle.graph_path_or_fp32(graph, self.precision) for graph in self.spec.graph_names}
        for graph, path in self.paths.items():
            try:
                if cache is not None:
                    session = cached_session(cache, bundle, path, threads, active)
                else:
                    session = factory(str(path), options, active)
            except Exception as exc:  # noqa: BLE001 - ORT raises plain RuntimeError/Fail subclasses
                raise BundleError(f"{path}: onnxruntime cannot load this graph ({exc})") from exc
            # A replaced graph with other names or widths is refused here, before any record is read.
            check_signature(self.spec.graph(graph), [(i.name, i.shape) for i in session.get_inputs()],
                            [(o.name, o.shape) for o in session.get_outputs()], bundle.dims, str(path))
            # The first session tells which providers really work; the others reuse that answer.
            active = list(session.get_providers())
            self.sessions[graph] = session
        self.providers = active
        self.provider = active[0] if active else "unknown"
        if self.provider != requested[0]:  # expected with the automatic choice on a machine without a GPU
            level = logging.WARNING if providers else logging.INFO
            log.log(level, "onnxruntime: %s requested but %s is in use", requested[0], self.provider)
        self._input_types = {
            c: {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in s.get_inputs()}
            for c, s in self.sessions.items()
        }

    @classmethod
    def bundle_unavailable_reason(cls, bundle: Bundle, precision: str) -> str | None:
        if bundle.has_graphs(precision):
            return None
        return f"bundle has no {precision} graphs (has {', '.join(bundle.precisions())})"

    @classmethod
    def from_bundle(cls, bundle: Bundle, precision: str | None = None, threads: int | None = None,
                    providers: Sequence[str] | None = None, session_factory: SessionFactory | None = None,
                    **options: Any) -> OnnxRuntimeBackend:
        reject_options(cls.name, options)
        return cls(bundle, precision, providers, threads, session_factory)

    def files(self) -> list[Path]:
        return list(dict.fromkeys(self.paths.values()))

    def peak_probe(self) -> PeakProbe | None:
        # the same threads and optimisation as the sessions (a warm-start session's own options skip optimising)
        return onnxruntime_probe(self.provider, session_options(self.threads), self.precision)

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        types = self._input_types[graph]
        feeds = {k: np.ascontiguousarray(v, dtype=types.get(k, v.dtype)) for k, v in feeds.items()}
        return self.sessions[graph].run(None, feeds)

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(IMAGE_GRAPH.name, IMAGE_GRAPH.feeds(pixel_values))[0], dtype=np.float32)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(TEXT_GRAPH.name, TEXT_GRAPH.feeds(input_ids))[0], dtype=np.float32)

    def encode_text_outputs(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        graph = self.spec.text_graph
        outputs = self._run(graph.name, graph.feeds(input_ids))
        return {name: np.asarray(out, dtype=np.float32) for name, out in zip(graph.output_names, outputs,
                                                                              strict=True)}

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        head = self.spec.head(task) if task else self.spec.heads[0]
        graph = head.graph_spec()
        logits, probs = self._run(graph.name, head_feeds(graph, image_embeds, text_embeds))[:2]  # order checked
        return np.asarray(logits, dtype=np.float32), np.asarray(probs, dtype=np.float32)

    def run_head_outputs(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None,
                         extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        graph = (self.spec.head(task) if task else self.spec.heads[0]).graph_spec()
        outputs = self._run(graph.name, head_feeds(graph, image_embeds, text_embeds, extra))
        return {name: np.asarray(out, dtype=np.float32) for name, out in zip(graph.output_names, outputs,
                                                                              strict=True)}

    def close(self) -> None:
        self.sessions.clear()
