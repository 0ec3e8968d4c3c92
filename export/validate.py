"""Parity gates: run each exported graph in ONNX Runtime and compare it with a reference.

The reference is the PyTorch model at export time (`TorchBackend`), or the bundle's fp32 ONNX graphs when
TensorRT engines are built from a bundle. Inputs are real records (`--calib-data`, see
`crisis_tool.export.calibration`) or, without them, generated (seeded): normalised-image-like pixels and token
ids of varied length, trimmed to the longest real sequence as the runtime tokenizer does. Batches include 1, an
odd batch and the (capped) max batch. Every report records `n` (samples compared) and, for top-1 agreement, its
95% Wilson interval: "99%" on 68 samples is a much weaker claim than on 512.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.errors import CrisisToolError
from crisis_tool.runtime.graph_table import END_TO_END, GRAPHS, Tolerance

VALIDATION_BATCH_CAP = 64  # --max-batch above this is validated at 64 (recorded in the manifest)


class RuntimeCannotRun(CrisisToolError):
    """ONNX Runtime on this machine cannot load or execute a graph (e.g. fp16 kernels missing on CPU)."""


def validation_batches(max_batch: int, cap: int = VALIDATION_BATCH_CAP) -> list[int]:
    """Batch 1, an odd batch (3) and min(max_batch, cap), without duplicates."""
    top = max(1, min(max_batch, cap))
    return sorted({1, min(3, top), top})


@dataclass
class ParityCase:
    """One batch of generated inputs with the reference outputs."""

    pixel_values: np.ndarray
    input_ids: np.ndarray
    image_embeds: np.ndarray
    text_embeds: np.ndarray
    logits: np.ndarray
    probs: np.ndarray

    @property
    def batch(self) -> int:
        return int(self.pixel_values.shape[0])


def generate_ids(
    batch: int, rng: np.random.Generator, sot: int, eot: int, context_length: int = 77
) -> np.ndarray:
    """Token ids [batch, L]: sot, random tokens, eot, zero padding; trimmed to the longest sequence."""
    lengths = rng.integers(1, context_length - 1, size=batch)
    ids = np.zeros((batch, context_length), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, 0] = sot
        ids[row, 1 : n + 1] = rng.integers(1, sot, size=n)
        ids[row, n + 1] = eot
    longest = int(lengths.max()) + 2
    return ids[:, :longest]


def generated_inputs(batches: list[int], image_size: int, sot: int, eot: int, context_length: int = 77,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded (pixel_values, input_ids) per batch size: the gate's inputs when no records are given."""
    rng = np.random.default_rng(seed)
    out = []
    for batch in batches:
        pixels = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
        out.append((pixels, generate_ids(batch, rng, sot, eot, context_length)))
    return out


def reference_cases(reference: Any, inputs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[ParityCase]:
    """The reference (a Backend-like object) run on each (pixel_values, input_ids) batch."""
    run_head = getattr(reference, "run_head", None) or reference.decode
    cases = []
    for pixels, ids in inputs:
        image_embeds = np.asarray(reference.encode_image(pixels), dtype=np.float32)
        text_embeds = np.asarray(reference.encode_text(ids), dtype=np.float32)
        logits, probs = run_head(image_embeds, text_embeds)
        cases.append(ParityCase(pixels, ids, image_embeds, text_embeds, np.asarray(logits), np.asarray(probs)))
    return cases


def make_cases(reference: Any, batches: list[int], image_size: int, sot: int, eot: int,
               context_length: int = 77, seed: int = 0) -> list[ParityCase]:
    """Generated inputs for each batch size and the reference outputs on them."""
    return reference_cases(reference, generated_inputs(batches, image_size, sot, eot, context_length, seed))


def wilson_interval(agree: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion agree/n (sound at 0/n and n/n, unlike the normal one)."""
    if n <= 0:
        return 0.0, 1.0
    p = agree / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if agree == 0 else max(0.0, centre - half)
    hi = 1.0 if agree == n else min(1.0, centre + half)
    return lo, hi


def open_session(path: Path) -> Any:
    """A CPU ONNX Runtime session; `RuntimeCannotRun` when the runtime refuses the graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeCannotRun(f"onnxruntime cannot load {Path(path).name}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _run(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:
        raise RuntimeCannotRun(f"onnxruntime cannot run the graph: {_first_line(exc)}") from exc


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.min(np.sum(a64 * b64, axis=1) / np.maximum(denom, 1e-30)))


def judge(numbers: dict[str, Any], tol: Tolerance) -> dict[str, Any]:
    """`numbers` rounded, with the gate's limits and `passed` (top-1 is gated on its point value)."""
    passed = True
    if tol.max_abs is not None:
        passed &= numbers["max_abs"] <= tol.max_abs
    if tol.min_cosine is not None:
        passed &= numbers["min_cosine"] >= tol.min_cosine
    if tol.min_top1 is not None:
        passed &= numbers["top1_agreement"] >= tol.min_top1
    limits = {k: v for k, v in vars(tol).items() if v is not None}
    return {k: _round(v) for k, v in numbers.items()} | {"limits": limits, "passed": bool(passed)}


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, tuple):
        return [_round(v) for v in value]
    return value


def top1_numbers(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of two logit arrays with its 95% Wilson interval."""
    agree, n = int(np.sum(got.argmax(1) == ref.argmax(1))), int(got.shape[0])
    return {"top1_agreement": agree / n if n else 0.0, "top1_interval": wilson_interval(agree, n)}


def compare(outs: list[np.ndarray], refs: list[np.ndarray], logits: bool) -> dict[str, Any]:
    """max abs, min cosine and n (plus top-1 with its interval for logits) of outputs against references."""
    got, ref = np.concatenate(outs), np.concatenate(refs)
    numbers: dict[str, Any] = {"max_abs": float(np.max(np.abs(got - ref))), "min_cosine": min_cosine(got, ref),
                               "n": int(got.shape[0])}
    if logits:
        numbers |= top1_numbers(got, ref)
    return numbers


GraphRunner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def session_runner(path: Path) -> GraphRunner:
    """feeds -> outputs of one graph in a CPU onnxruntime session."""
    session = open_session(path)
    return lambda feeds: _run(session, feeds)


def check_runner(component: str, run: GraphRunner, cases: list[ParityCase], precision: str) -> dict[str, Any]:
    """Parity numbers of one graph (any runner: onnxruntime, a TensorRT engine) with its gate."""
    outs, refs, probs_diff = [], [], 0.0
    for case in cases:
        if component == "image_encoder":
            outs.append(run({"pixel_values": case.pixel_values})[0])
            refs.append(case.image_embeds)
        elif component == "text_encoder":
            outs.append(run({"input_ids": case.input_ids})[0])
            refs.append(case.text_embeds)
        else:
            logits, probs = run({"image_embeds": case.image_embeds, "text_embeds": case.text_embeds})[:2]
            outs.append(logits)
            refs.append(case.logits)
            probs_diff = max(probs_diff, float(np.max(np.abs(probs - case.probs))))
    numbers = compare(outs, refs, logits=component == "head")
    if component == "head":
        numbers["max_abs_probs"] = probs_diff
    numbers["batches"] = sorted({c.batch for c in cases})
    return judge(numbers, GRAPHS[component].tolerance(precision))


def check_graph(component: str, path: Path, cases: list[ParityCase], precision: str) -> dict[str, Any]:
    """Parity numbers of one ONNX graph against the reference, with its gate from the graph table."""
    return check_runner(component, session_runner(path), cases, precision)


def check_end_to_end(paths: dict[str, Path], cases: list[ParityCase], precision: str) -> dict[str, Any]:
    """Image encoder -> text encoder -> head in ONNX Runtime vs the reference, on logits."""
    image, text, head = (session_runner(paths[c]) for c in ("image_encoder", "text_encoder", "head"))
    outs = []
    for case in cases:
        image_embeds = image({"pixel_values": case.pixel_values})[0]
        text_embeds = text({"input_ids": case.input_ids})[0]
        outs.append(head({"image_embeds": image_embeds, "text_embeds": text_embeds})[0])
    numbers = compare(outs, [c.logits for c in cases], logits=True)
    numbers["batches"] = sorted({c.batch for c in cases})
    return judge(numbers, END_TO_END[precision])


def validate_graphs(paths: dict[str, Path], cases: list[ParityCase], precision: str) -> dict[str, Any]:
    """Parity of every graph and end to end: {component: {...}, "end_to_end": {...}}."""
    report = {component: check_graph(component, path, cases, precision) for component, path in paths.items()}
    report["end_to_end"] = check_end_to_end(paths, cases, precision)
    return report


def failures(parity: dict[str, dict[str, Any]]) -> list[str]:
    """'precision component: violations' of every failed gate in a {precision: report} mapping.

    A failed end-to-end entry with a `fallback` list also names every combination tried and, per graph, every
    candidate with its numbers.
    """
    out = []
    for precision, report in parity.items():
        for name, entry in report.items():
            if isinstance(entry, dict) and entry.get("passed") is False:
                out.append(f"{precision} {name}{_violations(entry)}{_attempts(report, entry)}")
    return out


def _attempts(report: dict[str, Any], entry: dict[str, Any]) -> str:
    from crisis_tool.export.fallback import describe_attempt

    if not entry.get("fallback"):
        return ""
    combos = "; ".join(describe_attempt(attempt) for attempt in entry["fallback"])
    graphs = []
    for graph, graph_entry in report.items():
        candidates = graph_entry.get("candidates") if isinstance(graph_entry, dict) else None
        if candidates:
            numbers = ", ".join(f"{name} {_candidate_numbers(c)}" for name, c in candidates.items())
            graphs.append(f"candidates {graph}: {numbers}")
    return f" [tried {combos}]" + (f" [{'; '.join(graphs)}]" if graphs else "")


def _candidate_numbers(c: dict[str, Any]) -> str:
    if "error" in c:
        return "cannot run"
    key = "top1_agreement" if "top1_agreement" in c else "min_cosine"
    verdict = "pass" if c.get("passed") else "fail"
    timing = f", {c['seconds'] * 1e3:.3g} ms" if "seconds" in c else ""
    return f"{key} {c.get(key, float('nan')):.6g} ({verdict}{timing})"


def _violations(entry: dict[str, Any]) -> str:
    limits = entry.get("limits", {})
    checks = (("max_abs", "max_abs", ">"), ("min_cosine", "min_cosine", "<"), ("min_top1", "top1_agreement", "<"))
    broken = [
        f"{key} {entry[key]:.6g} {op} {limits[limit]:.6g}"
        for limit, key, op in checks
        if limit in limits and key in entry
        and (entry[key] > limits[limit] if op == ">" else entry[key] < limits[limit])
    ]
    return f": {', '.join(broken)}" if broken else ""
