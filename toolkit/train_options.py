"""The options of a training run and their defaults, declared once (torch-free, so the CLI reads them at start).

Defaults follow the paper's code: SGD lr 1e-3, batch 32, up to 50 epochs with early stopping after 10 epochs
without dev improvement, CrisisMMD settingA splits, OpenCLIP ViT-B/32 with OpenAI weights.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
DEFAULT_CACHE = Path.home() / ".cache" / "crisis-tool" / "features"


@dataclass
class TrainOptions:
    """Hyper-parameters and data options of one training run."""

    head: str = "guided-diff"
    modality: str = "both"
    text_source: str = "tweet"
    optimizer: str = "sgd"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 50
    early_stop: int = 10
    seed: int = 0
    skip_bad: bool = False
    splits: str = "settingA"
    review_precision: float = 0.9  # the dev precision the accepted posts must reach (the review threshold)
    review_threshold: float | None = None  # a fixed review threshold instead


TRAIN_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainOptions)}
