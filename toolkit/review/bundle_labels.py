"""The possible labels of each head of a bundle, for the review page's choices."""

from __future__ import annotations

from typing import Any


def labels_by_task(bundle: Any) -> dict[str, tuple[str, ...]]:
    """{task: labels} in head order: from the bundle's model spec heads when it has them, else the manifest's
    one task and its labels."""
    heads = getattr(getattr(bundle, "spec", None), "heads", None)
    if heads:
        return {head.task: tuple(head.labels) for head in heads}
    return {bundle.manifest.task: tuple(bundle.labels)}
