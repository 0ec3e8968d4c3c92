"""Parity gates: run each exported graph in ONNX Runtime and compare it with the PyTorch reference.

Inputs are generated (seeded): normalised-image-like pixels and token ids of varied length, trimmed to
the longest real sequence as the runtime tokenizer does. Checked at
batch 1, an odd batch and the (capped) max batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.export.graph_specs import END_TO_END, GRAPHS, Tolerance
from crisis_tool.runtime.errors import CrisisToolError

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


def make_cases(reference: Any, batches: list[int], image_size: int, sot: int, eot: int,
               context_length: int = 77, seed: int = 0) -> list[ParityCase]:
    """Generated inputs for each batch size and the reference (TorchBackend-like) outputs on them."""
    rng = np.random.default_rng(seed)
    cases = []
    for batch in batches:
        pixels = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
        ids = generate_ids(batch, rng, sot, eot, context_length)
        image_embeds = reference.encode_image(pixels)
        text_embeds = reference.encode_text(ids)
        logits, probs = reference.decode(image_embeds, text_embeds)
        cases.append(ParityCase(pixels, ids, image_embeds, text_embeds, logits, probs))
    return cases


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


def _judge(numbers: dict[str, Any], tol: Tolerance) -> dict[str, Any]:
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
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _compare(outs: list[np.ndarray], refs: list[np.ndarray], logits: bool) -> dict[str, float]:
    got, ref = np.concatenate(outs), np.concatenate(refs)
    numbers = {"max_abs": float(np.max(np.abs(got - ref))), "min_cosine": min_cosine(got, ref)}
    if logits:
        numbers["top1_agreement"] = float(np.mean(got.argmax(1) == ref.argmax(1)))
    return numbers


def check_graph(component: str, path: Path, cases: list[ParityCase], precision: str) -> dict[str, Any]:
    """Parity numbers of one graph against the reference, with its gate from the graph table."""
    session = open_session(path)
    outs, refs, probs_diff = [], [], 0.0
    for case in cases:
        if component == "image_encoder":
            outs.append(_run(session, {"pixel_values": case.pixel_values})[0])
            refs.append(case.image_embeds)
        elif component == "text_encoder":
            outs.append(_run(session, {"input_ids": case.input_ids})[0])
            refs.append(case.text_embeds)
        else:
            feeds = {"image_embeds": case.image_embeds, "text_embeds": case.text_embeds}
            logits, probs = _run(session, feeds)
            outs.append(logits)
            refs.append(case.logits)
            probs_diff = max(probs_diff, float(np.max(np.abs(probs - case.probs))))
    numbers = _compare(outs, refs, logits=component == "head")
    if component == "head":
        numbers["max_abs_probs"] = probs_diff
    numbers["batches"] = [c.batch for c in cases]
    return _judge(numbers, GRAPHS[component].tolerance(precision))


def check_end_to_end(paths: dict[str, Path], cases: list[ParityCase], precision: str) -> dict[str, Any]:
    """Image encoder -> text encoder -> head in ONNX Runtime vs the reference, on logits."""
    image, text, head = (open_session(paths[c]) for c in ("image_encoder", "text_encoder", "head"))
    outs = []
    for case in cases:
        image_embeds = _run(image, {"pixel_values": case.pixel_values})[0]
        text_embeds = _run(text, {"input_ids": case.input_ids})[0]
        outs.append(_run(head, {"image_embeds": image_embeds, "text_embeds": text_embeds})[0])
    numbers = _compare(outs, [c.logits for c in cases], logits=True)
    numbers["batches"] = [c.batch for c in cases]
    return _judge(numbers, END_TO_END[precision])


def validate_graphs(paths: dict[str, Path], cases: list[ParityCase], precision: str) -> dict[str, Any]:
    """Parity of every graph and end to end: {component: {...}, "end_to_end": {...}}."""
    report = {component: check_graph(component, path, cases, precision) for component, path in paths.items()}
    report["end_to_end"] = check_end_to_end(paths, cases, precision)
    return report


def failures(parity: dict[str, dict[str, Any]]) -> list[str]:
    """'precision component' of every failed gate in a {precision: report} mapping."""
    return [
        f"{precision} {name}{_violations(entry)}"
        for precision, report in parity.items()
        for name, entry in report.items()
        if isinstance(entry, dict) and entry.get("passed") is False
    ]


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
