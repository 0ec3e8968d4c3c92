"""Batch invariance: a record's answer alone must equal its answer inside a batch of mixed records.

`check_batch_invariance(target, inputs)` runs every record once alone (batch 1) and once inside one batch of
`batch_size` mixed records (photo-like and noise images, short and context-filling texts, exact duplicates),
and reports the largest difference. `target` is one of:

* a `Backend` (encode_image / encode_text / run_head): `inputs` is a `MixedInputs` (None: generated from
  the backend's `dims`). Texts are trimmed as the Predictor trims them (alone: to the record's own length; in
  the batch: to the batch's longest), so padding that leaks into a record is caught too. Compared: the probs
  of every head (the bundle's model spec; else the one head).
* a `Predictor` (has `predict`): `inputs` is a list of `Record`s (None: `mixed_records()`); its embedding
  caches are emptied before every call so that nothing is served from a cache. Compared: every head's probs.
* a callable `run_fn(feeds) -> array [B, ...]` (one ONNX graph, say): `inputs` is a dict of feeds with the
  records on axis 0. Compared: the output, relative to the record's largest magnitude (|a - b| / max|b|).

Tolerances (`TOLERANCES`, by precision; `tolerance=` overrides). fp32: 1e-6, what the issue asks. Reduced
precisions compute every row independently too once activation scales are static, so their bound is also tight;
the residual is float rounding that depends on the GEMM's row count (kernel blocking) before a quantize or a
bf16 rounding, which can move one quantized value by one step: int8 and bf16 / fp16 get 1e-4 (a probability;
onnxruntime's dynamic int8, which picks one activation scale per batch, moves by 1e-3 to 1e-2 and fails).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TOLERANCES: dict[str, float] = {"fp32": 1e-6, "fp16": 1e-4, "bf16": 1e-4, "int8": 1e-4}
DEFAULT_TOLERANCE = 1e-4  # a precision not listed above
BATCH_SIZE = 32

RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class InvarianceReport:
    """Outcome of one check: the largest alone-vs-batch difference, where it was, and the verdict."""

    target: str
    precision: str
    batch_size: int
    n_records: int
    max_diff: float
    worst_record: str
    tolerance: float
    measure: str  # "probs abs" or "output rel"

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_diff)) and self.max_diff <= self.tolerance

    def describe(self) -> str:
        """One line: verdict, max difference against its bound, where, and how it was measured."""
        verdict = "invariant" if self.passed else "NOT batch-invariant"
        return (f"{self.target} {self.precision}: {verdict}: max |alone - in batch of {self.batch_size}| "
                f"{self.max_diff:.3g} ({self.measure}, bound {self.tolerance:g}) at record {self.worst_record} "
                f"of {self.n_records}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class MixedInputs:
    """Backend-level records: pixel_values float32 [N,3,H,W] and input_ids int64 [N,L] (0-padded)."""

    pixel_values: np.ndarray
    input_ids: np.ndarray


def tolerance_for(precision: str) -> float:
    return TOLERANCES.get(precision, DEFAULT_TOLERANCE)


def _lengths(ids: np.ndarray) -> np.ndarray:
    """Real length of each row: last non-zero position + 1 (at least 2, as the Predictor trims)."""
    nonzero = ids != 0
    last = ids.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.maximum(np.where(nonzero.any(axis=1), last, 0), 2)


def mixed_inputs(dims: Mapping[str, int], n: int = BATCH_SIZE, seed: int = 0, sot: int = 49406,
                 eot: int | None = None) -> MixedInputs:
    """n mixed backend records: smooth photo-like and uniform-noise images, saturated ones; texts of 1 token
    to the full context; the last quarter duplicates earlier records exactly (image and text)."""
    rng = np.random.default_rng(seed)
    size, context = int(dims["H"]), int(dims["L"])
    eot = int(dims.get("eot", 49407)) if eot is None else eot
    vocab_top = min(sot, 49405)
    pixels = np.empty((n, 3, size, size), dtype=np.float32)
    ids = np.zeros((n, context), dtype=np.int64)
    unique = max(1, n - n // 4)
    for i in range(unique):
        kind = i % 3
        if kind == 0:  # uniform noise in the normalised range
            pixels[i] = rng.uniform(-1.8, 2.2, (3, size, size))
        elif kind == 1:  # smooth gradient plus mild noise (photo-like)
            ramp = np.linspace(-1.5, 1.5, size, dtype=np.float32)
            pixels[i] = ramp[None, :, None] * rng.uniform(0.3, 1, (3, 1, 1)) + rng.normal(0, 0.1, (3, size, size))
        else:  # saturated: one extreme value per channel
            pixels[i] = rng.choice([-1.79, 2.15], size=(3, 1, 1)) * np.ones((1, size, size))
        length = min([1, context - 2, int(rng.integers(3, 30))][i % 3], context - 2)
        row = [sot, *rng.integers(1, vocab_top, size=length).tolist(), eot]
        ids[i, : len(row)] = row
    for i in range(unique, n):  # exact duplicates of earlier records
        pixels[i], ids[i] = pixels[i - unique], ids[i - unique]
    return MixedInputs(pixels, ids)


def mixed_records(n: int = BATCH_SIZE, seed: int = 0, image_size: int = 96) -> list[Any]:
    """n mixed Predictor records (encoded JPEG/PNG bytes): noise and smooth images, empty-ish to very long
    texts, exact duplicates in the last quarter."""
    from PIL import Image

    from crisis_tool.runtime.records import Record

    rng = np.random.default_rng(seed)
    unique = max(1, n - n // 4)
    records = []
    for i in range(unique):
        w, h = int(rng.integers(image_size // 2, 3 * image_size)), int(rng.integers(image_size // 2, 3 * image_size))
        if i % 2:
            array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            x = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
            array = np.clip(x + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG" if i % 3 else "PNG", quality=90)
        words = ["flood", "rescue", "road", "bridge", "help", "#storm", "shelter", "damage", "water", "fire"]
        count = [1, 200, int(rng.integers(5, 25))][i % 3]
        text = " ".join(str(rng.choice(words)) for _ in range(count))
        records.append(Record(f"r{i}", text, buf.getvalue()))
    for i in range(unique, n):
        src = records[i - unique]
        records.append(Record(f"r{i}", src.text, src.image))
    return records


def check_batch_invariance(target: Any, inputs: Any = None, *, precision: str | None = None,
                           tolerance: float | None = None, batch_size: int = BATCH_SIZE,
                           name: str | None = None) -> InvarianceReport:
    """Each record alone against the same record inside a batch of `batch_size`; see the module docstring."""
    if hasattr(target, "predict"):
        kind, run = "probs abs", _predictor_runner(target, inputs, batch_size)
    elif all(hasattr(target, a) for a in ("encode_image", "encode_text", "run_head")):
        kind, run = "probs abs", _backend_runner(target, inputs, batch_size)
    elif callable(target):
        if not isinstance(inputs, Mapping):
            raise TypeError("a run_fn target needs its feeds as a dict of arrays (records on axis 0)")
        kind, run = "output rel", _feeds_runner(target, inputs, batch_size)
    else:
        raise TypeError(f"cannot check {type(target).__name__}: not a Predictor, Backend or callable")
    precision = precision or str(getattr(getattr(target, "backend", target), "precision", "fp32"))
    bound = tolerance_for(precision) if tolerance is None else float(tolerance)
    ids, alone, together = run()
    worst, worst_id = 0.0, ids[0] if ids else "-"
    for rid, a, b in zip(ids, alone, together, strict=True):
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if kind == "output rel":
            diff /= max(float(np.max(np.abs(b))), 1e-12)
        if not np.isfinite(diff) or diff > worst:
            worst, worst_id = diff, rid
            if not np.isfinite(diff):
                break
    label = name or str(getattr(getattr(target, "backend", target), "name", type(target).__name__))
    return InvarianceReport(label, precision, min(batch_size, len(ids)), len(ids), worst, str(worst_id), bound, kind)


def _backend_probs(backend: Any, pixels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    width = int(_lengths(ids).max())
    image = backend.encode_image(np.ascontiguousarray(pixels, dtype=np.float32))
    text = backend.encode_text(np.ascontiguousarray(ids[:, :width], dtype=np.int64))
    heads = getattr(getattr(backend, "spec", None), "heads", None)
    if not heads:
        return np.asarray(backend.run_head(image, text)[1], dtype=np.float64)
    return np.concatenate([np.asarray(backend.run_head(image, text, h.task)[1], dtype=np.float64) for h in heads],
                          axis=1)


def _backend_runner(backend: Any, inputs: MixedInputs | None, batch_size: int
                    ) -> Callable[[], tuple[list[str], list[np.ndarray], list[np.ndarray]]]:
    def run() -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        if inputs is None and not hasattr(backend, "dims"):
            raise TypeError("pass MixedInputs (e.g. mixed_inputs(bundle.dims)) for a backend without .dims")
        data = inputs if inputs is not None else mixed_inputs(backend.dims, batch_size)
        pixels, ids = data.pixel_values[:batch_size], data.input_ids[:batch_size]
        together = list(_backend_probs(backend, pixels, ids))
        alone = [_backend_probs(backend, pixels[i : i + 1], ids[i : i + 1])[0] for i in range(len(pixels))]
        return [str(i) for i in range(len(pixels))], alone, together

    return run


def _feeds_runner(run_fn: RunFn, feeds: Mapping[str, np.ndarray], batch_size: int
                  ) -> Callable[[], tuple[list[str], list[np.ndarray], list[np.ndarray]]]:
    def run() -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        batch = {k: np.ascontiguousarray(v[:batch_size]) for k, v in feeds.items()}
        n = len(next(iter(batch.values())))
        together = np.asarray(run_fn(batch), dtype=np.float64)
        alone = [np.asarray(run_fn({k: v[i : i + 1] for k, v in batch.items()}), dtype=np.float64)[0]
                 for i in range(n)]
        return [str(i) for i in range(n)], alone, list(together)

    return run


def _prediction_probs(prediction: Any) -> np.ndarray:
    """Every head's probabilities of one Prediction, flattened (an error: NaN, so it never passes)."""
    if getattr(prediction, "error", None):
        return np.array([np.nan])
    tasks = getattr(prediction, "tasks", None)
    if tasks:
        return np.array([v for task in tasks.values() for v in task.probs.values()], dtype=np.float64)
    return np.array(list(prediction.probs.values()), dtype=np.float64)


def _clear_caches(predictor: Any) -> None:
    for attr in ("image_cache", "text_cache"):
        cache = getattr(predictor, attr, None)
        data = getattr(cache, "_data", None)
        lock = getattr(cache, "_lock", None)
        if data is not None and lock is not None:
            with lock:
                data.clear()


def _predictor_runner(predictor: Any, records: Sequence[Any] | None, batch_size: int
                      ) -> Callable[[], tuple[list[str], list[np.ndarray], list[np.ndarray]]]:
    def run() -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        items = list(records if records is not None else mixed_records(batch_size))[:batch_size]
        if getattr(predictor, "max_batch", batch_size) < len(items):
            raise ValueError(f"the predictor's max batch {predictor.batch_size} is below {len(items)}")
        _clear_caches(predictor)
        together = [_prediction_probs(p) for p in predictor.predict(items)]
        alone = []
        for item in items:
            _clear_caches(predictor)
            alone.append(_prediction_probs(predictor.predict([item])[0]))
        return [str(getattr(r, "id", i)) for i, r in enumerate(items)], alone, together

    return run


def gate_entry(report: InvarianceReport) -> dict[str, Any]:
    """The numbers an export manifest or a bench row records for one check."""
    return {"batch_invariance_max_diff": float(f"{report.max_diff:.3g}"), "batch_invariance_bound": report.tolerance,
            "batch_invariant": report.passed}
