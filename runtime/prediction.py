"""What the Predictor answers for one record: one calibrated answer per head, the review flag, the near-duplicate
group, or the record's error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crisis_tool.runtime.model_spec import HeadSpec


@dataclass(frozen=True)
class TaskPrediction:
    """One head's answer: label, calibrated confidence and probabilities (label order), review flag."""

    label: str
    confidence: float
    probs: dict[str, float]
    needs_review: bool | None = None  # None: the bundle stores no review threshold for this head
    # --explain bundles: {"image": share, "text": share} (summing to 1), and for heads that weigh words
    # "words": [(word, weight), ...] (the top words by the head's Differential Attention weight)
    explain: dict[str, Any] | None = None


@dataclass(frozen=True)
class Prediction:
    """The output for one record: one `TaskPrediction` per selected head, or `error` (then `tasks` is empty)."""

    id: str | None
    tasks: dict[str, TaskPrediction] = field(default_factory=dict)
    error: str | None = None
    group: str | None = None  # near-duplicate group id (the first record id of its group)
    duplicate_of: str | None = None
    image_hash: int | None = None  # the image's 64-bit pHash (grouping; not written): label groups a whole run

    @classmethod
    def failed(cls, rid: str | None, error: str) -> Prediction:
        return cls(rid, {}, error)

    def _first(self) -> TaskPrediction | None:
        return next(iter(self.tasks.values()), None)

    @property
    def label(self) -> str | None:
        """The first head's label (the only one of a one-head bundle)."""
        first = self._first()
        return first.label if first else None

    @property
    def confidence(self) -> float | None:
        first = self._first()
        return first.confidence if first else None

    @property
    def probs(self) -> dict[str, float]:
        first = self._first()
        return dict(first.probs) if first else {}

    @property
    def needs_review(self) -> bool:
        """True when any head flags the post for a person."""
        return any(bool(t.needs_review) for t in self.tasks.values())

    @property
    def min_confidence(self) -> float | None:
        """The lowest confidence over the heads (the review queue's sort key)."""
        return min((t.confidence for t in self.tasks.values()), default=None)


def calibrated_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) per row, in float64 for the division, returned as float32."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def task_prediction(head: HeadSpec, logits: np.ndarray, probs: np.ndarray, share: np.ndarray | None = None,
                    words: list[tuple[str, float]] | None = None) -> TaskPrediction:
    """One record's answer from one head: its raw logits and graph probabilities, calibrated here; `share`
    is the head's modality share (image, text) when the bundle was exported with --explain, `words` its top
    words when the head weighs them."""
    p = probs if head.temperature == 1.0 else calibrated_probs(logits[None, :], head.temperature)[0]
    best = int(np.argmax(p))
    confidence = float(p[best])
    review = None if head.review_threshold is None else confidence < head.review_threshold
    explain: dict[str, Any] | None = None if share is None else {"image": float(share[0]), "text": float(share[1])}
    if explain is not None and words is not None:
        explain["words"] = [[word, weight] for word, weight in words]
    return TaskPrediction(head.labels[best], confidence,
                          {label: float(v) for label, v in zip(head.labels, p, strict=True)}, review, explain)
