"""The PyTorch reference backend: the original OpenCLIP encoders and the trained head, eager, fp32.

Implements the runtime Backend protocol (encode_image, encode_text, decode) so that `bench` and the parity
tests can put it next to the ONNX Runtime and TensorRT backends. Text ids may be trimmed (B x L, L <= 77);
they are zero padded back to the context length and fed to `encode_text` exactly as at training time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import UsageError

MODEL_CONFIG_NAME = "model_config.json"
HEAD_WEIGHTS_NAME = "head.safetensors"


class TorchBackend:
    """Eager PyTorch CLIP + head; numpy in, numpy out."""

    name = "torch"
    precision = "fp32"

    def __init__(
        self, clip_model: nn.Module, head: nn.Module, context_length: int = 77, device: str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.clip_model = clip_model.to(self.device).eval()
        self.head = head.to(self.device).eval()
        self.context_length = int(context_length)
        self.provider = f"torch-{self.device.type}"

    @classmethod
    def from_bundle(cls, bundle: str | Path | Bundle, precision: str | None = None,
                    providers: list[str] | None = None, device: str = "cpu") -> TorchBackend:
        """Rebuild the reference from a bundle's model_config.json + head.safetensors and its CLIP weights."""
        from crisis_tool.clip_loader import load_recorded_clip
        from crisis_tool.models.heads import HeadConfig, build_head

        if precision not in (None, "fp32") or providers:
            raise UsageError("the torch reference backend runs fp32 only and takes no --providers")
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        config = json.loads((bundle.root / MODEL_CONFIG_NAME).read_text(encoding="utf-8"))
        clip = load_recorded_clip(config["clip"], bundle.root)
        head = build_head(HeadConfig.from_dict(config["head"]))
        head.load_state_dict(load_file(str(bundle.root / HEAD_WEIGHTS_NAME)))
        return cls(clip.model, head, clip.context_length, device)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @torch.no_grad()
    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        out = self.clip_model.encode_image(self._tensor(pixel_values.astype(np.float32, copy=False)))
        return out.float().cpu().numpy()

    @torch.no_grad()
    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.zeros((input_ids.shape[0], self.context_length), dtype=np.int64)
        ids[:, : input_ids.shape[1]] = input_ids[:, : self.context_length]
        return self.clip_model.encode_text(self._tensor(ids)).float().cpu().numpy()

    @torch.no_grad()
    def decode(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = self._tensor(image_embeds.astype(np.float32, copy=False))
        logits = self.head(image, self._tensor(text_embeds.astype(np.float32, copy=False)))
        return logits.cpu().numpy(), torch.softmax(logits, dim=-1).cpu().numpy()

    def close(self) -> None:
        """Nothing to release (the protocol's hook for backends that hold device memory)."""
