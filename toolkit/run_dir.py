"""A training run directory: `model.safetensors` + `config.json` + `metrics.json`, loaded with no pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from crisis_tool.models.heads import HeadConfig, build_head
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
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def save_run(path: Path, head: torch.nn.Module, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write a run dir (weights as safetensors, config and metrics as JSON)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME))
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
        head = build_head(HeadConfig.from_dict(config["head"]))
        head.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{path}: run dir is inconsistent ({exc})") from exc
    metrics_path = path / METRICS_NAME
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return RunDir(path=path, head=head.eval(), config=config, metrics=metrics)
