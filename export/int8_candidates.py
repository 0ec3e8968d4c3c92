"""int8 per graph: every candidate quantization is built and gated; the passing ones are timed, fastest first.

Candidates are static Q/DQ only: activation scales are calibrated once, at export, so a record's answer never
depends on the records that share its batch. onnxruntime's dynamic quantization picks one activation scale per
tensor per batch: it moved a post's probability by up to 0.017 between batch 1 and a batch of 32, so it is no
longer a candidate (its names stay in `DYNAMIC_CANDIDATES`, for reading older manifests).

* `static-U8S8-per-channel`: every weight node (MatMul / Gemm / Conv with an initializer weight) quantized,
  uint8 activations (min/max calibrated) with int8 per-channel weights: onnxruntime's U8S8 kernels
  (VNNI / AMX where the CPU has them), and what OpenVINO fuses into int8 MatMuls.
* `rowwise-U8S8-per-channel`: no calibration; each activation row (token) is quantized with its own scale,
  computed from that row alone (`qdq.rowwise_int8_graph`), so it is as invariant as a static scale and follows
  each record's range; int8 per-channel weights, onnxruntime's MatMulInteger.
* `static-U8S8-per-channel-float-residual` (`rowwise-...-float-residual` without real records): the same with
  the residual-stream writers (attention output and MLP down projections, the widest activations) in float.

Every candidate (two or three per graph) is built and gated, not only until one passes, so that the end-to-end
fallback (`crisis_tool.export.fallback`) can try the next passing one before it leaves a graph fp32, without
building anything at that step. The cost is one build, gate and timing per candidate: what a graph whose first
candidates failed cost before. The fastest passing candidate is kept at the graph's path; the others wait beside
it (`candidate_path`) until the fallback keeps one of them or deletes them. `passing` in the entry lists them,
fastest first.

Calibration: the given records (`--calib-data`) or, without them, the gate's own (generated) batches, which the
export already says loudly; without real records only the per-row candidates (no calibration) are made. Every
candidate that passes its parity gate must also pass the batch-invariance check
(`crisis_tool.runtime.batch_invariance`: each record alone vs inside one mixed batch of up to 32), then each
passing candidate runs a few interleaved repetitions on one gate batch in onnxruntime on the CPU; the best
time counts. The manifest records every candidate's gate numbers, invariance and time, and the fp32 graph's
time beside them. A graph with no passing candidate stays fp32 (recorded with the best candidate's numbers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.export.validate import ParityCase, RuntimeCannotRun, check_graph, open_session
from crisis_tool.runtime.batch_invariance import check_batch_invariance, gate_entry

DYNAMIC_CANDIDATES = ("QInt8-per-channel", "QInt8", "QUInt8-per-channel", "QUInt8")  # batch-coupled: never made
STATIC_CANDIDATE = "static-U8S8-per-channel"
FLOAT_RESIDUAL_CANDIDATE = "static-U8S8-per-channel-float-residual"
ROWWISE_CANDIDATE = "rowwise-U8S8-per-channel"
ROWWISE_FLOAT_RESIDUAL_CANDIDATE = "rowwise-U8S8-per-channel-float-residual"
STATIC_CANDIDATES = (STATIC_CANDIDATE, ROWWISE_CANDIDATE, FLOAT_RESIDUAL_CANDIDATE)  # batch-invariant, all made
UNCALIBRATED_CANDIDATES = (ROWWISE_CANDIDATE, ROWWISE_FLOAT_RESIDUAL_CANDIDATE)  # no real records: no static scales
TIMING_ROUNDS = 3  # timed rounds after one warm-up round; each round runs every candidate once
TIMING_BATCH = 8
INVARIANCE_BATCH = 32
GATE_KEYS = ("min_cosine", "max_abs", "top1_agreement", "top1_interval", "n", "passed")
INVARIANCE_KEYS = ("batch_invariance_max_diff", "batch_invariant")


def candidate_names(calibrated: bool = True) -> tuple[str, ...]:
    """The candidates, in the order they are made. Without real calibration records static ranges would come
    from the gate's own generated inputs (and be judged on the records they were fitted to): only per-row ones
    then."""
    return STATIC_CANDIDATES if calibrated else UNCALIBRATED_CANDIDATES


def candidate_path(dst: Path, name: str) -> Path:
    """Where candidate `name` of the graph kept at `dst` is written (scratch beside it)."""
    return dst.with_name(f"{dst.stem}.{name}.onnx")


def make_candidate(name: str, src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """Write candidate `name` of graph `src` to `dst`, calibrated on `calibration` feeds."""
    import onnx

    from crisis_tool.export.qdq import name_nodes, qdq_graph, residual_writers, rowwise_int8_graph, weight_nodes

    if name == STATIC_CANDIDATE:
        return qdq_graph(src, dst, calibration, flavour="cpu")
    if name == ROWWISE_CANDIDATE:
        return rowwise_int8_graph(src, dst)
    if name in (FLOAT_RESIDUAL_CANDIDATE, ROWWISE_FLOAT_RESIDUAL_CANDIDATE):
        model = onnx.load(str(src))
        name_nodes(model)
        kept_float = set(residual_writers(model))
        nodes = [n for n in weight_nodes(model) if n not in kept_float]
        if name == ROWWISE_FLOAT_RESIDUAL_CANDIDATE:
            return rowwise_int8_graph(src, dst, nodes=nodes)
        return qdq_graph(src, dst, calibration, flavour="cpu", nodes=nodes)
    raise ValueError(f"unknown int8 candidate {name!r} (dynamic quantization couples records and is not offered)")


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


def invariance_feeds(component: str, cases: list[ParityCase], n: int = INVARIANCE_BATCH) -> dict[str, np.ndarray]:
    """Up to `n` gate records of `component` as one batch, the last quarter exact duplicates of the first ones
    (text ids zero-padded to the widest; `_trimmed` cuts each call's ids to its own longest, as the runtime)."""
    if component == "image_encoder":
        arrays = {"pixel_values": np.concatenate([c.pixel_values for c in cases])}
    elif component == "text_encoder":
        width = max(c.input_ids.shape[1] for c in cases)
        arrays = {"input_ids": np.concatenate([np.pad(c.input_ids, ((0, 0), (0, width - c.input_ids.shape[1])))
                                               for c in cases])}
    else:
        arrays = {"image_embeds": np.concatenate([c.image_embeds for c in cases]),
                  "text_embeds": np.concatenate([c.text_embeds for c in cases])}
    unique = max(1, min(len(next(iter(arrays.values()))), n - n // 4))
    return {k: np.concatenate([v[:unique], v[: min(n - unique, unique)]]) for k, v in arrays.items()}


def _trimmed(session: Any) -> Any:
    """feeds -> first output, with integer id inputs cut to the batch's longest sequence (as the runtime does)."""
    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        fed = {}
        for name, array in feeds.items():
            if array.dtype.kind in "iu" and array.ndim == 2:
                nonzero = (array != 0).any(axis=0)
                width = max(2, int(np.nonzero(nonzero)[0].max()) + 1 if nonzero.any() else 2)
                array = np.ascontiguousarray(array[:, :width])
            fed[name] = array
        return session.run(None, fed)[0]

    return run


def invariance_of(component: str, path: Path, cases: list[ParityCase]) -> dict[str, Any]:
    """`gate_entry` numbers of graph `path`: each gate record alone vs inside one batch (int8 bound)."""
    report = check_batch_invariance(_trimmed(open_session(path)), invariance_feeds(component, cases),
                                    precision="int8", name=component)
    return gate_entry(report)


def pick_int8(component: str, src: Path, dst: Path, cases: list[ParityCase],
              calibration: list[dict[str, np.ndarray]] | None) -> dict[str, Any]:
    """Gate every candidate (parity, then batch invariance), time the passing ones with the fp32 graph, keep the
    fastest at `dst` and the other passing ones at `candidate_path(dst, name)`. `calibration` None: calibrate on
    the gate cases themselves.

    Returns the kept graph's gate entry with `chosen` (a candidate name or "fp32"), `weight_type` (the same),
    `why`, `candidates` ({name: gate numbers, invariance, seconds}), `passing` (names, fastest first) and
    `fp32_seconds`.
    """
    from crisis_tool.export.calibration import calibration_feeds

    feeds_for_calibration = calibration or calibration_feeds(component, cases)
    tried: dict[str, dict[str, Any]] = {}
    passing: dict[str, Path] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name in candidate_names(calibrated=bool(calibration)):
        path = candidate_path(dst, name)
        try:
            make_candidate(name, src, path, feeds_for_calibration)
            entry = check_graph(component, path, cases, "int8")
            if entry["passed"]:
                entry = {**entry, **invariance_of(component, path, cases)}
                entry["passed"] = entry["batch_invariant"]
        except RuntimeCannotRun as exc:
            tried[name] = {"passed": False, "error": str(exc)}
            path.unlink(missing_ok=True)
            continue
        tried[name] = {k: entry[k] for k in (*GATE_KEYS, *INVARIANCE_KEYS) if k in entry}
        if entry["passed"]:
            passing[name], entries[name] = path, entry
        else:
            path.unlink(missing_ok=True)  # failed its own gate: never offered to the end-to-end step
    feeds = timing_feeds(component, cases)
    seconds = time_graphs({**passing, "fp32": src}, feeds)
    for name in passing:
        tried[name]["seconds"] = _sig(seconds[name])
    fp32_seconds = _sig(seconds["fp32"])
    order = sorted(passing, key=lambda name: seconds[name])  # fastest first
    if order:
        chosen = order[0]
        passing[chosen].replace(dst)
        why = (f"fastest of {len(order)} passing candidate(s): {seconds[chosen] * 1e3:.3g} ms vs fp32 "
               f"{seconds['fp32'] * 1e3:.3g} ms at batch {next(iter(feeds.values())).shape[0]}")
        entry = entries[chosen]
    else:
        chosen = "fp32"
        why = f"no int8 candidate passed its gate ({_best(tried)})"
        entry = check_graph(component, src, cases, "fp32")  # what is kept: the fp32 graph, fp32 gate
    return {**entry, "chosen": chosen, "weight_type": chosen, "why": why, "candidates": tried, "passing": order,
            "fp32_seconds": fp32_seconds}


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def _best(tried: dict[str, dict[str, Any]]) -> str:
    scored = [(v.get("top1_agreement", v.get("min_cosine", -1.0)), k) for k, v in tried.items() if "error" not in v]
    if not scored:
        return "none could run"
    score, name = max(scored)
    return f"best {name} at {score:.6g}"
