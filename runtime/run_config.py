"""The heads a training run config declares, read the same way for one-head and multi-task runs.

A multi-task run config lists `heads: [{task, labels, head, temperature?, review_threshold?}]`; a one-head
config (before multi-task training) names `task`, `labels` and `head` at the top. Both read as a list here.
"""

from __future__ import annotations

from typing import Any

from crisis_tool.runtime.errors import BundleError


def run_config_heads(config: dict[str, Any], where: str = "run config") -> list[dict[str, Any]]:
    """[{task, labels, head, temperature, review_threshold}] of a run config; BundleError when malformed."""
    heads = config.get("heads")
    if heads is None:
        heads = [{"task": config.get("task"), "labels": config.get("labels"), "head": config.get("head"),
                  "temperature": config.get("temperature", 1.0),
                  "review_threshold": config.get("review_threshold")}]
    if not isinstance(heads, list) or not heads:
        raise BundleError(f"{where}: 'heads' must be a non-empty list")
    out = []
    for i, head in enumerate(heads):
        if not isinstance(head, dict) or not isinstance(head.get("task"), str) \
                or not isinstance(head.get("labels"), list) or not isinstance(head.get("head"), dict):
            raise BundleError(f"{where}: heads[{i}] needs task, labels and head")
        out.append({"temperature": 1.0, "review_threshold": None, **head})
    return out
