"""`--backend auto`: the fastest configuration this bundle's gates verified, measured on this machine.

Candidates are every registered backend x precision that can run here (`unavailable_reason`: engines, GPUs),
that the bundle has files for (`bundle_unavailable_reason`), and that its export gates did not refuse
(`validated` in the manifest, and no graph recorded as not batch-invariant). OpenVINO adds int8 graphs with bf16
for the rest where the CPU has bf16. torch (the reference implementation) is never a candidate.

The probe loads each candidate, checks it on a few mixed records against the fp32 onnxruntime answers
(embedding cosine >= 0.999 and the same top-1: this also gates modes the export did not, such as bf16) and for
batch invariance (`crisis_tool.runtime.batch_invariance`), then times whole posts (image + text + head) at
`PROBE_BATCH`; the fastest passing candidate wins. The result is cached in the user cache
(`auto/<bundle digest>-<machine key>.json`, written atomically; the machine key covers the CPU model and its
int8/bf16 flags, the CPU count, threads, engine versions and GPUs), so later starts skip the probe.

`AutoBackend.from_bundle` returns an `AutoBackend` that delegates to the chosen backend; `.choice` is the
`AutoChoice` (`line()`: what was chosen and why, in one line; `to_dict()`: for `/v1/info`). An explicit
`--backend NAME` never comes here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crisis_tool.runtime.atomic_files import atomic_write_text
from crisis_tool.runtime.backends.base import Backend, reject_options
from crisis_tool.runtime.backends.registry import backend_class, backend_entry, backend_names, create_backend
from crisis_tool.runtime.backends.user_cache import cache_dir
from crisis_tool.runtime.batch_invariance import check_batch_invariance, mixed_inputs
from crisis_tool.runtime.errors import BundleError, CrisisToolError, UsageError
from crisis_tool.runtime.parity import min_cosine

if TYPE_CHECKING:
    from crisis_tool.runtime.backends.peak_probe import PeakProbe
    from crisis_tool.runtime.bundle import Bundle

log = logging.getLogger(__name__)

CACHE_VERSION = 1
PROBE_BATCH = 4
PROBE_REPEATS = 2  # timed runs after one warm-up; the best counts
INVARIANCE_RECORDS = 6
MIN_COSINE = 0.999
NEVER_CANDIDATES = ("auto", "torch")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")
ENGINES = ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt")
_clock = time.perf_counter  # the probe's clock (tests substitute a deterministic one)


@dataclass(frozen=True)
class Candidate:
    """One configuration: a backend, a precision and backend options (e.g. inference_precision=bf16)."""

    backend: str
    precision: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        extra = "".join(f"+{v}" for _, v in self.options)
        return f"{self.backend} {self.precision}{extra}"


@dataclass
class AutoChoice:
    """What `auto` chose and why, with every candidate's probe result (`probes`: label -> numbers or reason)."""

    backend: str
    precision: str
    options: dict[str, str]
    posts_per_s: float
    why: str
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    cache_file: str | None = None
    cached: bool = False

    @property
    def label(self) -> str:
        return Candidate(self.backend, self.precision, tuple(sorted(self.options.items()))).label

    def line(self) -> str:
        """One line for the terminal: the choice, its measured speed and why."""
        source = "cached probe" if self.cached else "probe"
        return f"backend auto: {self.label} ({self.posts_per_s:.3g} posts/s in the {source}; {self.why})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- machine and bundle keys
def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def _gpus() -> list[str]:
    root = Path("/proc/driver/nvidia/gpus")
    try:
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    except OSError:
        return []


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What decides which configuration is fastest here."""
    model, flags = _cpu_model_and_flags()
    versions = {}
    for name in ENGINES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "flags": flags, "cpus": cpus, "threads": threads, "engines": versions, "gpus": _gpus()}


def machine_key(info: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def bundle_digest(bundle: Bundle) -> str:
    """The manifest digest (it hashes every bundle file), else the manifest file's own sha256."""
    root = Path(bundle.root)
    for name, reader in (("manifest.sha256", lambda p: p.read_text().split()[0]),
                         ("manifest.json", lambda p: hashlib.sha256(p.read_bytes()).hexdigest())):
        try:
            return str(reader(root / name))[:16]
        except (OSError, IndexError):
            continue
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- candidates and gates
def gate_refusal(bundle: Bundle, precision: str) -> str | None:
    """Why the bundle's export gates refuse `precision` graphs (None: verified)."""
    manifest = bundle.manifest
    validated = getattr(manifest, "validated", {}) or {}
    if validated.get(precision) is False or (precision != "fp32" and getattr(manifest, "forced", False)):
        return f"the export gate did not validate its {precision} graphs"
    parity = (getattr(manifest, "parity", {}) or {}).get(precision, {}) or {}
    coupled = [g for g, entry in parity.items() if isinstance(entry, dict) and entry.get("batch_invariant") is False]
    if coupled:
        return f"{precision} graphs recorded as not batch-invariant ({', '.join(coupled)})"
    return None


def candidates(bundle: Bundle, precision: str | None = None) -> tuple[list[Candidate], dict[str, str]]:
    """(configurations to probe, {label: why skipped}) for this bundle on this machine; `precision` restricts
    them to that precision (the fp32 reference is then still probed first, for parity)."""
    chosen: list[Candidate] = []
    skipped: dict[str, str] = {}
    for name in backend_names():
        if name in NEVER_CANDIDATES:
            continue
        try:
            cls = backend_class(name)
        except CrisisToolError as exc:
            skipped[name] = str(exc)
            continue
        reason = cls.unavailable_reason()
        if reason:
            skipped[name] = reason
            continue
        for mode in backend_entry(name).precisions:
            if precision is not None and mode not in (precision, "fp32"):
                continue
            configs = [Candidate(name, mode)]
            if name == "openvino" and mode == "int8":
                configs.append(Candidate(name, mode, (("inference_precision", "bf16"),)))
            graphs = _graph_precision(cls, mode)
            why = cls.bundle_unavailable_reason(bundle, mode) or gate_refusal(bundle, graphs)
            for config in configs:
                if why:
                    skipped[config.label] = why
                else:
                    chosen.append(config)
    return chosen, skipped


def _graph_precision(cls: type[Backend], precision: str) -> str:
    """The bundle graphs a backend precision runs (OpenVINO's bf16 runs the fp32 graphs)."""
    modes = getattr(sys.modules.get(cls.__module__), "PRECISION_MODES", None)
    return modes[precision][0] if isinstance(modes, dict) and precision in modes else precision


# ---------------------------------------------------------------- the probe
def _run_posts(backend: Backend, pixels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = backend.encode_image(pixels)
    text = backend.encode_text(ids)
    _, probs = backend.run_head(image, text)
    return image, text, probs


def probe_inputs(bundle: Bundle, batch: int = PROBE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Probe records: photo-like and noise images, texts of tweet length (trimmed like the Predictor's)."""
    mixed = mixed_inputs(bundle.dims, n=batch, seed=1)
    ids = mixed.input_ids
    width = int((ids != 0).any(axis=0).nonzero()[0].max()) + 1
    return mixed.pixel_values, np.ascontiguousarray(ids[:, : max(2, min(width, 32))])


def probe_candidate(bundle: Bundle, candidate: Candidate, threads: int | None,
                    reference: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                    inputs: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, Any], Any]:
    """(numbers, outputs) of one candidate: load time, posts/s, parity to the reference, batch invariance."""
    start = _clock()
    backend = create_backend(candidate.backend, bundle, precision=candidate.precision, threads=threads,
                             **dict(candidate.options))
    try:
        load_s = _clock() - start
        pixels, ids = inputs
        outputs = _run_posts(backend, pixels, ids)  # warm-up
        best = float("inf")
        for _ in range(PROBE_REPEATS):
            start = _clock()
            _run_posts(backend, pixels, ids)
            best = min(best, _clock() - start)
        numbers: dict[str, Any] = {"posts_per_s": round(len(pixels) / max(best, 1e-9), 3),
                                   "load_s": round(load_s, 3), "provider": backend.provider}
        problems = []
        if reference is not None:
            cosine = min(min_cosine(outputs[0], reference[0]), min_cosine(outputs[1], reference[1]))
            top1 = float(np.mean(outputs[2].argmax(1) == reference[2].argmax(1)))
            numbers.update(min_cosine=round(cosine, 6), top1_agreement=top1)
            if not (cosine >= MIN_COSINE and top1 == 1.0):
                problems.append(f"parity to fp32 (cosine {cosine:.5f}, top-1 {top1:.0%})")
        invariance = check_batch_invariance(backend, mixed_inputs(bundle.dims, n=INVARIANCE_RECORDS, seed=2),
                                            precision=candidate.precision, batch_size=INVARIANCE_RECORDS)
        numbers["batch_invariance_max_diff"] = float(f"{invariance.max_diff:.3g}")
        if not invariance.passed:
            problems.append(f"batch invariance ({invariance.max_diff:.3g} > {invariance.tolerance:g})")
        numbers["passed"] = not problems
        if problems:
            numbers["why"] = "failed " + " and ".join(problems)
        return numbers, outputs
    finally:
        backend.close()


def probe(bundle: Bundle, threads: int | None = None, precision: str | None = None
          ) -> tuple[dict[str, dict[str, Any]], list[Candidate]]:
    """Every candidate's numbers (or why it was skipped or failed to load) and the candidates probed."""
    configs, skipped = candidates(bundle, precision)
    results: dict[str, dict[str, Any]] = {label: {"passed": False, "why": why} for label, why in skipped.items()}
    configs.sort(key=lambda c: (c.backend != "onnxruntime", c.precision != "fp32"))  # the reference first
    inputs = probe_inputs(bundle)
    reference = None
    for config in configs:
        try:
            numbers, outputs = probe_candidate(bundle, config, threads, reference, inputs)
        except BundleError:
            raise  # a graph that does not match the bundle's spec is a broken bundle, never routed around
        except Exception as exc:  # noqa: BLE001 - a configuration that cannot load or run here is skipped
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            results[config.label] = {"passed": False, "why": f"cannot run: {first}"}
            continue
        if reference is None and config.precision == "fp32":
            reference = outputs
        results[config.label] = numbers
    return results, configs


# ---------------------------------------------------------------- choosing, with the cache
def cache_path(bundle: Bundle, info: dict[str, Any], precision: str | None = None) -> Path | None:
    folder = cache_dir("auto")
    suffix = f"-{precision}" if precision else ""
    return folder / f"{bundle_digest(bundle)}-{machine_key(info)}{suffix}.json" if folder else None


def _load_cached(path: Path | None) -> AutoChoice | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.pop("version", None) != CACHE_VERSION:
            return None
        choice = AutoChoice(**data)
    except (OSError, ValueError, TypeError):
        return None  # unreadable or from another version: probe again
    choice.cached, choice.cache_file = True, str(path)
    return choice


def choose(bundle: Bundle, threads: int | None = None, precision: str | None = None, refresh: bool = False
           ) -> AutoChoice:
    """The cached choice for this bundle and machine, or a fresh probe (cached afterwards); `precision`
    restricts the choice to that precision."""
    info = machine_info(threads)
    path = cache_path(bundle, info, precision)
    if not refresh and (cached := _load_cached(path)) is not None:
        return cached
    results, configs = probe(bundle, threads, precision)
    passing = [c for c in configs if results.get(c.label, {}).get("passed")
               and precision in (None, c.precision)]
    if not passing:
        details = "; ".join(f"{label}: {r.get('why', 'failed')}" for label, r in results.items())
        raise UsageError(f"backend auto: no configuration passed on this machine ({details}); pick one with --backend")
    best = max(passing, key=lambda c: results[c.label]["posts_per_s"])
    speed = results[best.label]["posts_per_s"]
    ref = next((results[c.label]["posts_per_s"] for c in configs
                if c.backend == "onnxruntime" and c.precision == "fp32" and c.label in results
                and "posts_per_s" in results[c.label]), None)
    versus = f", {speed / ref:.2f}x onnxruntime fp32" if ref and best.label != "onnxruntime fp32" else ""
    why = (f"fastest of {len(passing)} verified configuration(s) at batch {PROBE_BATCH}{versus}; "
           f"{len(results) - len(passing)} skipped or failed")
    choice = AutoChoice(best.backend, best.precision, dict(best.options), speed, why, results, info,
                        str(path) if path else None)
    if path is not None:
        try:
            atomic_write_text(path, json.dumps({"version": CACHE_VERSION, **choice.to_dict()}, indent=1))
        except (OSError, CrisisToolError) as exc:
            log.info("backend auto: cannot write its cache %s (%s)", path, exc)
    return choice


class AutoBackend(Backend):
    """The backend `choose` picked, behind the same interface; `.choice` says what and why."""

    name = "auto"

    def __init__(self, inner: Backend, choice: AutoChoice) -> None:
        self.inner = inner
        self.choice = choice
        self.precision = inner.precision
        self.provider = f"{inner.provider} via {inner.name}"
        self.engine_batch_limit = inner.engine_batch_limit
        self.spec = getattr(inner, "spec", None)

    @classmethod
    def from_bundle(cls, bundle: Bundle, precision: str | None = None, threads: int | None = None,
                    **options: Any) -> AutoBackend:
        """Probe (or read the cache), then build the chosen backend. A `precision` restricts the choice to
        it; backend options are refused (auto chooses them: name a backend with --backend to set them)."""
        reject_options("auto", options)
        choice = choose(bundle, threads, None if precision in (None, "auto") else precision)
        inner = create_backend(choice.backend, bundle, precision=choice.precision, threads=threads,
                               **choice.options)
        backend = cls(inner, choice)
        log.info("%s", choice.line())
        return backend

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.inner.encode_image(pixel_values)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self.inner.encode_text(input_ids)

    def encode_text_outputs(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        return self.inner.encode_text_outputs(input_ids)

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        if task is None:
            return self.inner.run_head(image_embeds, text_embeds)
        return self.inner.run_head(image_embeds, text_embeds, task)

    def run_head_outputs(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None,
                         extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return self.inner.run_head_outputs(image_embeds, text_embeds, task, extra)

    def synchronize(self) -> None:
        self.inner.synchronize()

    @property
    def h2d_seconds(self) -> float | None:
        return self.inner.h2d_seconds

    def files(self) -> list[Path]:
        return self.inner.files()

    def peak_probe(self) -> PeakProbe | None:
        return self.inner.peak_probe()

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> str:
        return f"auto -> {self.inner.describe()}"
