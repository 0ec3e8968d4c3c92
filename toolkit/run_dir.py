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
from crisis_tool.runtime.errors import BundleError, UsageError
from crisis_tool.runtime.model_spec import ModelSpec
from crisis_tool.runtime.run_config import run_config_heads

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"


@dataclass
class RunDir:
    """Trained heads (one per task), the config (heads, text source, clip, preprocess) and metrics.

    A multi-task run's config lists `heads` and its weights are keyed `<task>.<parameter>`; a one-head run
    (config `task`/`labels`/`head`, unprefixed weights) reads as one head.
    """

    path: Path
    heads: dict[str, torch.nn.Module]
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def head_entries(self) -> list[dict[str, Any]]:
        """[{task, labels, head, temperature, review_threshold}] per head."""
        return run_config_heads(self.config, str(self.path / CONFIG_NAME))

    @property
    def head(self) -> torch.nn.Module:
        """The first head (the only one of a one-head run)."""
        return next(iter(self.heads.values()))

    @property
    def head_config(self) -> HeadConfig:
        return HeadConfig.from_dict(self.head_entries[0]["head"])

    def head_configs(self) -> dict[str, HeadConfig]:
        return {h["task"]: HeadConfig.from_dict(h["head"]) for h in self.head_entries}

    @property
    def labels(self) -> list[str]:
        return list(self.head_entries[0]["labels"])

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def model_spec(self) -> ModelSpec:
        """The bundle spec of this run: one head per task, with its calibration and review threshold."""
        spec = ModelSpec.for_tasks((h["task"], h["labels"]) for h in self.head_entries)
        for h in self.head_entries:
            spec = spec.with_calibration(h["task"], float(h["temperature"]), h["review_threshold"])
        return spec


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def head_state(head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A head's weights as contiguous CPU tensors (what safetensors stores)."""
    return {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}


def save_run(path: Path, heads: torch.nn.Module | dict[str, torch.nn.Module], config: dict[str, Any],
             metrics: dict[str, Any]) -> None:
    """Write a run dir (weights as safetensors, config and metrics as JSON), each file atomically.

    `heads` is one module (a one-head config) or {task: module} (a config with `heads`: keys are prefixed).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(heads, dict):
        state = {f"{task}.{k}": v for task, head in heads.items() for k, v in head_state(head).items()}
    else:
        state = head_state(heads)
    atomic_write_bytes(path / WEIGHTS_NAME, save(state))
    write_json(path / CONFIG_NAME, config)
    write_json(path / METRICS_NAME, metrics)


def load_run(path: str | Path) -> RunDir:
    """Rebuild the heads of a run dir in eval mode. Raises UsageError for a missing or incomplete run dir."""
    path = Path(path)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (path / name).is_file():
            raise UsageError(f"{path}: not a run dir (missing {name}); train one with `crisis-tool train`")
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        entries = run_config_heads(config, str(path / CONFIG_NAME))
        configs = {h["task"]: HeadConfig.from_dict(h["head"]) for h in entries}
    except (KeyError, TypeError, ValueError, BundleError) as exc:
        raise UsageError(f"{path}: run dir is inconsistent ({exc})") from None
    for entry in entries:
        labels, cfg = entry["labels"], configs[entry["task"]]
        if len(labels) != cfg.num_classes:
            raise UsageError(f"{path}: run dir is inconsistent: {len(labels)} labels but the {entry['task']} head "
                             f"has {cfg.num_classes} classes")
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path / WEIGHTS_NAME}: cannot load the head weights ({first})") from None
    prefixed = "heads" in config
    heads = {}
    for task, cfg in configs.items():
        head = build_head(cfg)
        part = {k[len(task) + 1:]: v for k, v in state.items() if k.startswith(f"{task}.")} if prefixed else state
        try:
            head.load_state_dict(part)
        except Exception as exc:  # noqa: BLE001 - missing or mismatched tensors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{path / WEIGHTS_NAME}: cannot load the {task} head weights ({first})") from None
        heads[task] = head.eval()
    metrics_path = path / METRICS_NAME
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return RunDir(path=path, heads=heads, config=config, metrics=metrics)
