"""The PyTorch reference backend: the original OpenCLIP encoders and the trained head, eager, fp32.

A `Backend` like the ONNX Runtime and TensorRT ones, so that `bench`, `predict` and the parity gates can put it
next to them. It plugs into the runtime's registry through the `crisis_tool.backends` entry point (the runtime
never names this module). Text ids may be trimmed (B x L, L <= 77); they are zero padded back to the context
length and fed to `encode_text` exactly as at training time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from crisis_tool.runtime.backends.base import Backend, reject_options
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError, UsageError
from crisis_tool.runtime.manifest import MODEL_CONFIG_NAME
from crisis_tool.runtime.model_spec import ModelSpec
from crisis_tool.runtime.run_config import run_config_heads


class TorchBackend(Backend):
    """Eager PyTorch CLIP + head; numpy in, numpy out."""

    name = "torch"
    precision = "fp32"

    def __init__(
        self, clip_model: nn.Module, heads: nn.Module | dict[str, nn.Module], context_length: int = 77,
        device: str = "cpu", files: list[Path] | None = None, spec: ModelSpec | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.clip_model = clip_model.to(self.device).eval()
        named = heads if isinstance(heads, dict) else {"head": heads}
        self.heads = {task: head.to(self.device).eval() for task, head in named.items()}
        self.head = next(iter(self.heads.values()))
        self.spec = spec
        self.context_length = int(context_length)
        self.provider = f"torch-{self.device.type}"
        self._files = list(files or [])

    @classmethod
    def from_bundle(cls, bundle: Bundle, precision: str | None = None, threads: int | None = None,
                    device: str | None = None, **options: Any) -> TorchBackend:
        """Rebuild the reference from a bundle's model_config.json + head.safetensors and its CLIP weights.

        `device` defaults to CUDA when torch sees a GPU; `threads` sets torch's intra-op threads.
        """
        from crisis_tool.clip_loader import load_recorded_clip
        from crisis_tool.models.heads import HeadConfig, build_head

        if options.get("providers"):
            raise UsageError("the torch reference backend takes no --providers")
        torch_device(device)  # a bad --device is a usage error before any weights load
        reject_options(cls.name, {k: v for k, v in options.items() if k != "providers"})
        if precision not in (None, "fp32"):
            raise UsageError(f"the torch reference backend runs fp32 only, not {precision}")
        if threads:
            torch.set_num_threads(int(threads))
        config = bundle.run_config()
        clip = load_recorded_clip(config["clip"], bundle.root)
        configs = {h["task"]: h["head"] for h in run_config_heads(config, str(bundle.path(MODEL_CONFIG_NAME)))}
        heads, files = {}, [bundle.path(MODEL_CONFIG_NAME)]
        for spec_head in bundle.spec.heads:
            head = build_head(HeadConfig.from_dict(configs[spec_head.task]))
            weights = bundle.path(spec_head.weights)
            try:
                head.load_state_dict(load_file(str(weights)))
            except Exception as exc:  # noqa: BLE001 - corrupt or mismatched safetensors: one line
                raise BundleError(f"{weights}: cannot load the head weights ({str(exc).splitlines()[0]})") from None
            heads[spec_head.task] = head
            files.append(weights)
        return cls(clip.model, heads, clip.context_length, torch_device(device), files=files, spec=bundle.spec)

    def files(self) -> list[Path]:
        """The bundle files it runs (the CLIP weights come from the machine's cache, not the bundle)."""
        return list(self._files)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

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
    def run_head_outputs(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                         ) -> dict[str, np.ndarray]:
        """logits and probs, plus modality_share when the spec's head exports it (--explain)."""
        logits, probs = self.run_head(image_embeds, text_embeds, task)
        out = {"logits": logits, "probs": probs}
        spec_head = self.spec.head(task) if self.spec is not None and task is not None else None
        if spec_head is not None and spec_head.explain:
            head = self.heads[task] if task is not None else self.head
            share = head.modality_share(self._tensor(image_embeds.astype(np.float32, copy=False)),
                                        self._tensor(text_embeds.astype(np.float32, copy=False)))
            out["modality_share"] = share.cpu().numpy()
        return out

    @torch.no_grad()
    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        if task is not None and task not in self.heads:
            raise UsageError(f"unknown task {task!r}: the reference has heads {', '.join(self.heads)}")
        head = self.heads[task] if task is not None else self.head
        image = self._tensor(image_embeds.astype(np.float32, copy=False))
        logits = head(image, self._tensor(text_embeds.astype(np.float32, copy=False)))
        return logits.cpu().numpy(), torch.softmax(logits, dim=-1).cpu().numpy()


TORCH_DEVICES = {"CPU": "cpu", "GPU": "cuda"}


def torch_device(device: str | None) -> str:
    """torch's name for `--device` (CPU, GPU, or a torch name such as cuda:1); default: CUDA when torch sees one."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = TORCH_DEVICES.get(device.upper(), device)
    try:
        kind = torch.device(name).type
    except RuntimeError:
        kind = "unknown"
    if kind not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: the torch backend takes CPU, GPU or a torch device such as cuda:0")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: torch sees no CUDA GPU on this machine")
    return name
