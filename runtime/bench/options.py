"""What one `crisis-tool bench` run measures: the options, their defaults (read by the CLI) and their bounds.

Every bound is checked before any work starts, so a typo such as `--batch-sizes 100000` or `--seconds nan`
is one usage error instead of gigabytes of generated inputs or a run that never ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from crisis_tool.runtime.backends import backend_class, backend_variants
from crisis_tool.runtime.errors import MissingDependencyError, UsageError
from crisis_tool.runtime.image_decode import DECODE_MODES

WORKLOADS = ("e2e", "image", "text", "head")
DEFAULT_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "onnxruntime-fp16", "tensorrt", "tensorrt-fp16")
MAX_BATCH_SIZE = 256  # generated inputs: 2-4 batches of distinct JPEGs per batch size
MAX_SECONDS = 3600.0
MAX_WARMUP = 100
MAX_THREADS = 1024


@dataclass
class BenchOptions:
    bundle: Path
    backends: tuple[str, ...] = DEFAULT_BACKENDS  # registry variants: name or name-precision
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    workload: str = "e2e"
    seconds: float = 3.0  # timed budget per row
    warmup: int = 2
    threads: int | None = None
    device: str | None = None  # for the backends that take one (e.g. openvino CPU|GPU|NPU|AUTO); others as usual
    records: Path | None = None
    image_root: Path | None = None
    # generated text lengths, one row set each: None = real tweet lengths, N = every text N tokens (77: no
    # trimming possible, the fixed-length baseline)
    text_tokens: tuple[int | None, ...] = (None,)
    seed: int = 0
    gemm_seconds: float = 1.5
    measure_gemm: bool = True  # the roofline: each engine's MatMul peak (engine_peak), probed between rounds
    decode: tuple[str, ...] = ("exact",)  # image decode modes, one row set each (e2e); "fast" adds a cosine
    # labelled records (`records` with a `label` field/column): task metrics per row (task_metrics)
    label_map: dict[str, str] | None = None  # raw label -> class (a task's merged classes)
    task: str | None = None  # the head the labels are for (default: the bundle's first head)
    # further labelled sources, one per other head: (records, image_root, label_map, task)
    more_labelled: tuple[tuple[Path, Path | None, dict[str, str] | None, str], ...] = ()
    max_drop: float | None = None  # exit 1 when an ok row loses more than this of a metric vs the reference
    llava_file: Path | None = None  # LLaVA captions by image id for the labelled records (llava bundles)

    def check(self) -> None:
        """UsageError (one line) for any option out of its bounds; nothing has run yet."""
        variants = backend_variants()
        if not self.backends:
            raise UsageError("--backends: give at least one backend")
        unknown = [b for b in self.backends if b not in variants]
        if unknown:
            raise UsageError(f"unknown backend(s) {', '.join(unknown)} (choose from {', '.join(variants)})")
        if self.device is not None and not any(_takes_device(variants[b][0]) for b in self.backends):
            raise UsageError(f"--device: none of the backends {', '.join(self.backends)} takes a device")
        if self.workload not in WORKLOADS:
            raise UsageError(f"--workload {self.workload!r}: choose from {', '.join(WORKLOADS)}")
        if not self.batch_sizes or any(not 1 <= b <= MAX_BATCH_SIZE for b in self.batch_sizes):
            raise UsageError(f"--batch-sizes: integers from 1 to {MAX_BATCH_SIZE}, e.g. 1,8,32")
        for flag, value in (("--seconds", self.seconds), ("--gemm-seconds", self.gemm_seconds)):
            if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
                raise UsageError(f"{flag} {value}: a number of seconds above 0 and at most {MAX_SECONDS:g}")
        if not 0 <= self.warmup <= MAX_WARMUP:
            raise UsageError(f"--warmup {self.warmup}: between 0 and {MAX_WARMUP}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise UsageError(f"--threads {self.threads}: between 1 and {MAX_THREADS}")
        # 2 tokens (sot, eot) is an empty text, which the Predictor refuses: at least one word
        if not self.text_tokens or any(t is not None and not 3 <= t <= 77 for t in self.text_tokens):
            raise UsageError("--text-tokens: 'real' or token counts between 3 and 77, e.g. real,77")
        if not self.decode or any(d not in DECODE_MODES for d in self.decode):
            raise UsageError(f"--decode: one or more of {', '.join(DECODE_MODES)}, e.g. exact,fast")
        if self.max_drop is not None:
            if not (math.isfinite(self.max_drop) and 0 <= self.max_drop <= 1):
                raise UsageError(f"--max-drop {self.max_drop}: a metric difference between 0 and 1, e.g. 0.01")
            if self.records is None:
                raise UsageError("--max-drop needs labelled records: --data ROOT --task T --split S, or --records "
                                 "FILE with a 'label' field")


def _takes_device(name: str) -> bool:
    """True when backend `name` declares a `device` option (False when it cannot even be imported here)."""
    try:
        return backend_class(name).takes_option("device")
    except MissingDependencyError:
        return False
