"""The backend protocol: three components of an exported bundle behind one small interface."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """Runs a bundle's image encoder, text encoder and fusion head.

    `name` is the registry name, `precision` the graph variant in use (fp32|fp16|int8) and `provider` what
    really executes it (e.g. "CPUExecutionProvider" even when TensorRT was requested but is unusable).
    Implementations must be safe to call from several threads at once.
    """

    name: str = "backend"
    precision: str = "fp32"
    provider: str = "unknown"

    @abstractmethod
    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 [B,3,H,W] -> image embeddings float32 [B,D]."""

    @abstractmethod
    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        """int64 [B,L] (L <= context length) -> text embeddings float32 [B,D]."""

    @abstractmethod
    def decode(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fusion head: embeddings [B,D] x2 -> (logits [B,C], probs [B,C])."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/engines (optional)."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.provider})"
