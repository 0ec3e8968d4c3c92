"""Task metrics per bench row: accuracy, macro-F1, weighted-F1 and ECE per head, and the `--max-drop` check.

A multi-head bundle is scored on one labelled set per head (each task's own split); the row's top-level
metric columns are the first head's, and `tasks` holds every head's.

Each ok row classifies the whole labelled set once, outside the timed loop, with its own backend, batch size
and decode mode (a cache-free Predictor, so every record really runs). Records that fail (an unreadable line,
a missing or corrupt image, an empty text) are counted in `failed` and left out of the metric. Each metric's
difference from the reference row (PyTorch fp32 where installed, else onnxruntime fp32) is `<metric>_diff`
(negative: worse than the reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crisis_tool.runtime.bench.labelled_records import LabelledSet
from crisis_tool.runtime.bench.rows import Row
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.classification_metrics import classification_report
from crisis_tool.runtime.errors import CrisisToolError
from crisis_tool.runtime.predictor import Prediction, Predictor
from crisis_tool.runtime.triage.calibration import ece

METRICS = ("accuracy", "macro_f1", "weighted_f1")
ECE_BINS = 15
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1"}
METRIC_KEYS = (*METRICS, *(f"{m}_diff" for m in METRICS), "scored", "failed")


class MetricDropError(CrisisToolError):
    """An ok row lost more than `--max-drop` of a task metric against the reference row (exit 1)."""


def score(predictions: Sequence[Prediction], labelled: LabelledSet) -> dict[str, Any]:
    """The three metrics and the calibrated ECE of `labelled.task`'s head over the records predicted without
    error; `failed` counts every other item; `review` the share flagged and the accuracy of the rest."""
    if len(predictions) != len(labelled.items):
        raise RuntimeError(f"{len(predictions)} predictions for {len(labelled.items)} records")
    index = {name: i for i, name in enumerate(labelled.classes)}
    y_true, y_pred, probs, flagged = [], [], [], []
    for i, prediction in enumerate(predictions):
        answer = _answer(prediction, labelled.task)
        if prediction.error is None and answer is not None and i in labelled.labels:
            y_true.append(index[labelled.labels[i]])
            y_pred.append(index[answer.label])
            probs.append([answer.probs[c] for c in labelled.classes])
            flagged.append(answer.needs_review)
    failed = len(predictions) - len(y_true)
    out: dict[str, Any] = dict.fromkeys((*METRICS, "ece"))
    out.update(scored=len(y_true), failed=failed)
    if y_true:
        report = classification_report(np.asarray(y_true), np.asarray(y_pred), labelled.classes)
        out.update({m: round(float(report[m]), 6) for m in METRICS})
        out["ece"] = round(ece(np.asarray(probs), np.asarray(y_true), ECE_BINS), 6)
        if all(f is not None for f in flagged):
            right = np.asarray(y_true) == np.asarray(y_pred)
            keep = ~np.asarray(flagged, dtype=bool)
            out["review_share"] = round(float(1 - keep.mean()), 6)
            out["unflagged_accuracy"] = round(float(right[keep].mean()), 6) if keep.any() else None
    return out


def _answer(prediction: Prediction, task: str | None) -> Any:
    """The prediction's answer for `task` (the first head's when None), or None."""
    if task is None:
        return next(iter(prediction.tasks.values()), None)
    return prediction.tasks.get(task)


def metric_predictor(row: Row, bundle: Bundle) -> Predictor:
    """The subject's Predictor (created cache-free on first use), set to this row's batch size and decode mode."""
    subject = row.subject
    if subject.backend is None:
        raise RuntimeError("row has no backend")
    if subject.predictor is None:
        subject.predictor = Predictor(bundle, subject.backend, batch_size=row.batch_size, cache_size=0)
    subject.predictor.batch_size = row.batch_size
    subject.predictor.decode_mode = row.decode
    return subject.predictor


def attach_task_metrics(results: list[dict[str, Any]], rows: list[Row], labelled: LabelledSet | Sequence[LabelledSet],
                        bundle: Bundle, reference: Row | None) -> None:
    """Add the metric columns to every ok row (the first set's head at the top, every head under `tasks`), then
    each top-level metric's difference from the reference row."""
    sets = [labelled] if isinstance(labelled, LabelledSet) else list(labelled)
    for res, row in zip(results, rows, strict=True):
        res.update(dict.fromkeys(METRIC_KEYS))
        if res["status"] != "ok" or row.subject.backend is None:
            continue
        try:
            predictor = metric_predictor(row, bundle)
            per_task = {s.task or bundle.spec.tasks[0]: score(predictor.predict(s.items), s) for s in sets}
            res.update(next(iter(per_task.values())))
            if len(per_task) > 1:
                res["tasks"] = per_task
        except Exception as exc:  # noqa: BLE001 - a row that cannot classify the set says why, bench goes on
            res["metric_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if reference is None:
        return
    refs = [res for res, row in zip(results, rows, strict=True)
            if row.subject is reference.subject and res.get("accuracy") is not None]
    for res in results:
        if res.get("accuracy") is None or not refs:
            continue
        same = [r for r in refs if (r["batch_size"], r["text_tokens"], r.get("decode")) ==
                (res["batch_size"], res["text_tokens"], res.get("decode"))]
        ref = (same or refs)[0]
        for m in METRICS:
            res[f"{m}_diff"] = round(res[m] - ref[m], 6)


def row_name(row: dict[str, Any]) -> str:
    """How a row is named in messages: choice, batch size, and text/decode when they are not the default."""
    name = f"{row['choice']} batch {row['batch_size']}"
    if row.get("text_tokens") not in (None, "real"):
        name += f" text {row['text_tokens']}"
    if row.get("decode") not in (None, "exact"):
        name += f" decode {row['decode']}"
    return name


def check_max_drop(result: dict[str, Any], max_drop: float) -> None:
    """MetricDropError (one line: the row and the metric) when an ok row drops more than `max_drop`."""
    reference = result["header"].get("metric_reference")
    problems: list[str] = []
    for row in result["rows"]:
        if row["status"] != "ok":
            continue
        if row.get("metric_error") or row.get("accuracy") is None:
            problems.append(f"{row_name(row)}: no task metric ({row.get('metric_error') or 'no record scored'})")
            continue
        if reference is None or row.get("accuracy_diff") is None:
            problems.append(f"{row_name(row)}: no reference row to compare with (torch or onnxruntime fp32)")
            continue
        for m in METRICS:
            drop = -float(row[f"{m}_diff"])
            if drop > max_drop:
                problems.append(f"{row_name(row)}: {METRIC_NAMES[m]} {row[m]:.4f} is {drop:.4f} below the "
                                f"reference {reference} ({row[m] + drop:.4f}), more than --max-drop {max_drop:g}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MetricDropError(problems[0] + more)
