"""What one serving process holds behind its HTTP routes: the Predictor, limits, state and totals.

`ServiceCore` is shared by the Ray Serve replica (`deployment.PredictorServer`, which batches records across
requests with `batcher.RecordBatcher`) and the plain in-process server (`local_server`); subclasses provide
`predict_records`. Nothing here imports Ray.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from crisis_tool.runtime.bundle import MANIFEST_NAME
from crisis_tool.runtime.records import Record, RecordError
from crisis_tool.runtime.serve.http_guard import HeldBodies, UploadGuard
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions
from crisis_tool.runtime.serve.task_view import HeadInfo, head_infos

TRIM_EVERY_S = 1.0


def warmup_record() -> Record:
    """A small generated image and a short text: the record each replica answers before it is ready."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 96, 64)).save(buffer, format="PNG")
    return Record("warm-up", "flood waters rising near the bridge", buffer.getvalue())


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryTrimmer:
    """Gives freed heap back to the OS (glibc `malloc_trim`) at most once a second, so RSS returns to its
    baseline after a burst of large images instead of staying at the peak."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        self._trim = getattr(libc, "malloc_trim", None)
        self._last = 0.0
        self._lock = threading.Lock()

    def maybe_trim(self) -> None:
        if self._trim is None:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._last < TRIM_EVERY_S:
                return
            self._last = now
        self._trim(0)


class ServiceCore:
    """A loaded Predictor with the serve limits, readiness, draining state, model description and totals."""

    def __init__(self, predictor_options: PredictorOptions, serve_options: ServeOptions) -> None:
        self.settings = serve_options
        self.predictor = predictor_options.load()
        self.guard = UploadGuard(serve_options.body_timeout_s, serve_options.max_uploads_per_client,
                                 serve_options.max_uploads_total)
        self.held = HeldBodies(serve_options.max_held_bytes)
        self.trimmer = MemoryTrimmer()
        self.heads: list[HeadInfo] = head_infos(self.predictor)
        self.model_name = serve_options.model_name or Path(predictor_options.bundle).name
        self.in_flight = 0
        self.draining = False
        self.ready = False
        self.model_info = self._model_info(predictor_options, serve_options)

    def _model_info(self, predictor_options: PredictorOptions, serve_options: ServeOptions) -> dict[str, Any]:
        engine = self.predictor.backend
        manifest = Path(predictor_options.bundle) / MANIFEST_NAME
        return {
            "name": self.model_name,
            "labels": list(self.predictor.labels),
            "tasks": {h.task: list(h.labels) for h in self.heads},
            "text_source": self.predictor.text_source,
            "backend": engine.name,
            "precision": engine.precision,
            "provider": engine.provider,
            "batch_size": serve_options.batch_size,
            "threads": predictor_options.threads,  # intra-op threads (None: the backend's default)
            "decode": self.predictor.decode_mode,
            "max_image_bytes": self.predictor.image_limits.max_bytes,
            "max_image_pixels": serve_options.max_image_pixels,
            "max_request_pixels": serve_options.max_request_pixels,
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "warnings": self.predictor.warnings,  # e.g. random encoder weights
            "backend_choice": _choice(engine),  # what `--backend auto` chose and why
        }

    def warm_up(self) -> None:
        """Answer one generated record; ready only when that worked."""
        warm = self.predictor.predict([warmup_record()])[0]
        if warm.error is not None:
            raise RuntimeError(f"the warm-up record failed: {warm.error}")
        self.ready = True

    async def predict_records(self, items: list[Record | RecordError]) -> list[Any]:
        """One Prediction per item, in order (subclasses batch them)."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Totals of this process (subclasses add their batching totals)."""
        return self.guard_stats()

    def guard_stats(self) -> dict[str, float]:
        return {"uploads_in_flight": self.guard.in_flight, "uploads_cut": self.guard.cut_total,
                "uploads_refused": self.guard.refused_total, "in_flight": self.in_flight,
                "held_bytes": self.held.held, "held_refused": self.held.refused_total,
                "draining": float(self.draining), "rss_bytes": rss_bytes()}


def _choice(engine: Any) -> dict[str, Any] | None:
    """What `--backend auto` chose and why (None for an explicit backend)."""
    choice = getattr(engine, "choice", None)
    return choice.to_dict() if choice is not None and hasattr(choice, "to_dict") else None
