"""int8 per graph: every candidate quantization is gated, the passing ones are timed, the fastest is kept.

Candidates: dynamic quantization with QInt8 or QUInt8 weights, per-tensor or per-channel, plus static Q/DQ
(uint8 activations, int8 per-channel weights) when real calibration records are given. Which is fastest depends
on the CPU (onnxruntime's U8S8 kernels use VNNI where it exists; U8U8 does not), so it is measured here: each
passing candidate runs a few interleaved repetitions on one gate batch in onnxruntime on the CPU, the best
time counts. The manifest records every candidate's gate numbers and time, and the fp32 graph's time beside them.
A graph with no passing candidate stays fp32 (recorded with the best candidate's numbers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.export.validate import ParityCase, RuntimeCannotRun, check_graph, open_session

DYNAMIC_CANDIDATES = ("QInt8-per-channel", "QInt8", "QUInt8-per-channel", "QUInt8")
STATIC_CANDIDATE = "static-U8S8-per-channel"
TIMING_ROUNDS = 3  # timed rounds after one warm-up round; each round runs every candidate once
TIMING_BATCH = 8
GATE_KEYS = ("min_cosine", "max_abs", "top1_agreement", "top1_interval", "n", "passed")


def candidate_names(static: bool) -> tuple[str, ...]:
    return (*DYNAMIC_CANDIDATES, STATIC_CANDIDATE) if static else DYNAMIC_CANDIDATES


def make_candidate(name: str, src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """Write candidate `name` of graph `src` to `dst`."""
    from crisis_tool.export.precision import quantize_int8
    from crisis_tool.export.qdq import qdq_graph

    if name == STATIC_CANDIDATE:
        return qdq_graph(src, dst, calibration, flavour="cpu")
    return quantize_int8(src, dst, name)


def timing_feeds(component: str, cases: list[ParityCase]) -> dict[str, np.ndarray]:
    """One gate batch (the largest up to TIMING_BATCH) as the feeds of `component`."""
    fitting = [c for c in cases if c.batch <= TIMING_BATCH] or cases[:1]
    case = max(fitting, key=lambda c: c.batch)
    if component == "image_encoder":
        return {"pixel_values": case.pixel_values}
    if component == "text_encoder":
        return {"input_ids": case.input_ids}
    return {"image_embeds": case.image_embeds, "text_embeds": case.text_embeds}


def time_graphs(paths: dict[str, Path], feeds: dict[str, np.ndarray], rounds: int = TIMING_ROUNDS
                ) -> dict[str, float]:
    """Best seconds per run of each graph, interleaved (the order rotates each round) after a warm-up."""
    sessions = {name: open_session(path) for name, path in paths.items()}
    names = list(sessions)
    best = {name: float("inf") for name in names}
    for round_no in range(rounds + 1):
        order = names[round_no % len(names):] + names[: round_no % len(names)]
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feeds)
            elapsed = time.perf_counter() - start
            if round_no:
                best[name] = min(best[name], elapsed)
    return best


def pick_int8(component: str, src: Path, dst: Path, cases: list[ParityCase],
              calibration: list[dict[str, np.ndarray]] | None) -> dict[str, Any]:
    """Gate every candidate, time the passing ones with the fp32 graph, keep the fastest at `dst`.

    Returns the kept graph's gate entry with `chosen` (a candidate name or "fp32"), `weight_type` (the same),
    `why`, `candidates` ({name: gate numbers, seconds}) and `fp32_seconds`.
    """
    tried: dict[str, dict[str, Any]] = {}
    passing: dict[str, Path] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name in candidate_names(static=bool(calibration)):
        path = dst.with_name(f"{dst.stem}.{name}.onnx")
        try:
            make_candidate(name, src, path, calibration or [])
            entry = check_graph(component, path, cases, "int8")
        except RuntimeCannotRun as exc:
            tried[name] = {"passed": False, "error": str(exc)}
            path.unlink(missing_ok=True)
            continue
        tried[name] = {k: entry[k] for k in GATE_KEYS if k in entry}
        if entry["passed"]:
            passing[name], entries[name] = path, entry
        else:
            path.unlink(missing_ok=True)
    feeds = timing_feeds(component, cases)
    seconds = time_graphs({**passing, "fp32": src}, feeds)
    for name in passing:
        tried[name]["seconds"] = _sig(seconds[name])
    fp32_seconds = _sig(seconds["fp32"])
    if passing:
        chosen = min(passing, key=lambda name: seconds[name])
        passing[chosen].replace(dst)
        for name, path in passing.items():
            if name != chosen:
                path.unlink(missing_ok=True)
        why = (f"fastest of {len(passing)} passing candidate(s): {seconds[chosen] * 1e3:.3g} ms vs fp32 "
               f"{seconds['fp32'] * 1e3:.3g} ms at batch {next(iter(feeds.values())).shape[0]}")
        entry = entries[chosen]
    else:
        chosen = "fp32"
        why = f"no int8 candidate passed its gate ({_best(tried)})"
        entry = check_graph(component, src, cases, "fp32")  # what is kept: the fp32 graph, fp32 gate
    return {**entry, "chosen": chosen, "weight_type": chosen, "why": why, "candidates": tried,
            "fp32_seconds": fp32_seconds}


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def _best(tried: dict[str, dict[str, Any]]) -> str:
    scored = [(v.get("top1_agreement", v.get("min_cosine", -1.0)), k) for k, v in tried.items() if "error" not in v]
    if not scored:
        return "none could run"
    score, name = max(scored)
    return f"best {name} at {score:.6g}"
