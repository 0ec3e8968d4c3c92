"""Review progress: reviewed / remaining posts, reviewer-model agreement per head, confidence histograms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crisis_tool.corrections import Correction, Key
from crisis_tool.review.queue import QueueItem

HISTOGRAM_BINS = 10


def is_reviewed(item: QueueItem, latest: Mapping[Key, Correction]) -> bool:
    """True when every head of the post has a decision."""
    return all((item.id, task) in latest for task in item.heads)


def resume_position(items: Sequence[QueueItem], latest: Mapping[Key, Correction]) -> int:
    """The first post not fully decided (len(items) when all are): where a reopened page starts."""
    return next((it.index for it in items if not is_reviewed(it, latest)), len(items))


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> list[int]:
    """Counts of values in [0, 1] over `bins` equal bins (1.0 falls in the last)."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    return counts


def progress(items: Sequence[QueueItem], latest: Mapping[Key, Correction], tasks: Sequence[str]) -> dict[str, Any]:
    """What the page's progress bar shows (agreement is null for a head with no decision yet)."""
    reviewed = [it for it in items if is_reviewed(it, latest)]
    agreement = {}
    for task in tasks:
        decided = agree = 0
        for it in items:
            item = latest.get((it.id, task))
            if item is None or task not in it.heads:
                continue
            decided += 1
            agree += item.label == it.heads[task].label
        agreement[task] = {"decided": decided, "agree": agree, "rate": agree / decided if decided else None}
    return {
        "total": len(items), "reviewed": len(reviewed), "remaining": len(items) - len(reviewed),
        "position": resume_position(items, latest), "agreement": agreement,
        "histogram": {"bins": HISTOGRAM_BINS, "all": histogram([it.min_confidence for it in items]),
                      "reviewed": histogram([it.min_confidence for it in reviewed])},
    }
