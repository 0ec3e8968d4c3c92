"""Per-task answers of a Prediction and the heads of a Predictor, for one-head and multi-head bundles alike.

A multi-task Predictor answers `Prediction.tasks` ({task: TaskPrediction}) and exposes its `spec` (one
HeadSpec per task). A one-head Predictor answers `label`/`probs` only; its one task is the bundle manifest's
`task`. Both read through `task_view` and `head_infos`, so the v2 routes need no change when the bundle does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskAnswer:
    """One head's answer for one record (label None when the record failed)."""

    label: str | None
    probs: dict[str, float]
    needs_review: bool | None = None


@dataclass(frozen=True)
class HeadInfo:
    """One head as the server describes it: task, labels in the bundle's order, whether it flags for review."""

    task: str
    labels: tuple[str, ...]
    has_review: bool


def task_view(pred: Any, default_task: str) -> dict[str, TaskAnswer]:
    """{task: TaskAnswer}: `pred.tasks` when the Predictor fills it, else its one head as `default_task`."""
    tasks = getattr(pred, "tasks", None)
    if isinstance(tasks, dict):
        return {task: TaskAnswer(tp.label, dict(tp.probs), getattr(tp, "needs_review", None))
                for task, tp in tasks.items()}
    if pred.error is not None:
        return {}
    return {default_task: TaskAnswer(pred.label, dict(pred.probs or {}), None)}


def head_infos(predictor: Any) -> list[HeadInfo]:
    """The selected heads of a Predictor: from its model spec when it has one, else the bundle's one head."""
    spec = getattr(predictor, "spec", None)
    if spec is not None and getattr(spec, "heads", None):
        selected = set(getattr(predictor, "tasks", None) or spec.tasks)
        return [HeadInfo(h.task, tuple(h.labels), h.review_threshold is not None)
                for h in spec.heads if h.task in selected]
    return [HeadInfo(getattr(predictor.bundle.manifest, "task", "default"), tuple(predictor.labels), False)]


def failed_prediction(rid: str | None, error: str) -> Any:
    """A Prediction that carries only `error` (whatever the Prediction class's fields are)."""
    from crisis_tool.runtime.predictor import Prediction

    return Prediction.failed(rid, error)
