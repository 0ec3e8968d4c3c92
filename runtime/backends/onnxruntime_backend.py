"""ONNX Runtime backend: one InferenceSession per bundle component, created once.

Providers are chosen by what actually works: TensorRT EP, then CUDA EP, then CPU (or `providers=[...]`).
onnxruntime-gpu lists TensorRT/CUDA as available even on a machine without a GPU and then quietly runs on CPU,
so the provider reported as `.provider` is always read back from `session.get_providers()`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from crisis_tool.runtime.backends.base import Backend, reject_options
from crisis_tool.runtime.backends.peak_probe import PeakProbe, onnxruntime_probe
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError, UsageError
from crisis_tool.runtime.graph_table import GRAPHS, HEAD, IMAGE_ENCODER, TEXT_ENCODER, check_signature

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
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        factory = session_factory or _make_session
        self.sessions: dict[str, Any] = {}
        active = requested
        self.paths = {graph: bundle.graph_path_or_fp32(graph, self.precision) for graph in GRAPHS}
        for graph, path in self.paths.items():
            try:
                session = factory(str(path), options, active)
            except Exception as exc:  # noqa: BLE001 - ORT raises plain RuntimeError/Fail subclasses
                raise BundleError(f"{path}: onnxruntime cannot load this graph ({exc})") from exc
            # A replaced graph with other names or widths is refused here, before any record is read.
            check_signature(graph, [(i.name, i.shape) for i in session.get_inputs()],
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
        session = next(iter(self.sessions.values()))  # its SessionOptions: the same threads and optimisation
        return onnxruntime_probe(self.provider, session.get_session_options(), self.precision)

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        types = self._input_types[graph]
        feeds = {k: np.ascontiguousarray(v, dtype=types.get(k, v.dtype)) for k, v in feeds.items()}
        return self.sessions[graph].run(None, feeds)

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        (name,) = GRAPHS[IMAGE_ENCODER].input_names
        return np.asarray(self._run(IMAGE_ENCODER, {name: pixel_values})[0], dtype=np.float32)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        (name,) = GRAPHS[TEXT_ENCODER].input_names
        return np.asarray(self._run(TEXT_ENCODER, {name: input_ids})[0], dtype=np.float32)

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = dict(zip(GRAPHS[HEAD].input_names, (image_embeds, text_embeds), strict=True))
        logits, probs = self._run(HEAD, feeds)[:2]  # output order is checked against the graph table
        return np.asarray(logits, dtype=np.float32), np.asarray(probs, dtype=np.float32)

    def close(self) -> None:
        self.sessions.clear()
