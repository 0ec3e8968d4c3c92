"""A training run directory: `model.safetensors` + `config.json` + `metrics.json`, loaded with no pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from crisis_tool.models.heads import HeadConfig, build_head
from crisis_tool.runtime.atomic_files import atomic_write_bytes, atomic_write_text
from crisis_tool.runtime.errors import UsageError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"


@dataclass
class RunDir:
    """A trained head, its config (task, labels, text source, head, clip, preprocess) and metrics."""

    path: Path
    head: torch.nn.Module
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def head_config(self) -> HeadConfig:
        return HeadConfig.from_dict(self.config["head"])

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_run(path: Path, head: torch.nn.Module, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write a run dir (weights as safetensors, config and metrics as JSON), each file atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    atomic_write_bytes(path / WEIGHTS_NAME, save(state))
    write_json(path / CONFIG_NAME, config)
    write_json(path / METRICS_NAME, metrics)


def load_run(path: str | Path) -> RunDir:
    """Rebuild the head of a run dir in eval mode. Raises UsageError for a missing or incomplete run dir."""
    path = Path(path)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (path / name).is_file():
            raise UsageError(f"{path}: not a run dir (missing {name}); train one with `crisis-tool train`")
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        head_config = HeadConfig.from_dict(config["head"])
        labels = config["labels"]
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{path}: run dir is inconsistent ({exc})") from None
    if not isinstance(labels, list) or len(labels) != head_config.num_classes:
        count = len(labels) if isinstance(labels, list) else labels
        raise UsageError(f"{path}: run dir is inconsistent: {count} labels but the head has "
                         f"{head_config.num_classes} classes")
    head = build_head(head_config)
    try:
        head.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path / WEIGHTS_NAME}: cannot load the head weights ({first})") from None
    metrics_path = path / METRICS_NAME
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return RunDir(path=path, head=head.eval(), config=config, metrics=metrics)
