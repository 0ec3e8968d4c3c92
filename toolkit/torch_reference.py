"""The PyTorch reference backend: the original OpenCLIP encoders and the trained head, eager, fp32.

A `Backend` like the ONNX Runtime and TensorRT ones, so that `bench`, `predict` and the parity gates can put it
next to them. It plugs into the runtime's registry through the `crisis_tool.backends` entry point (the runtime
never names this module). Text ids may be trimmed (B x L, L <= 77); they are zero padded back to the context
length and fed to `encode_text` exactly as at training time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from crisis_tool.runtime.backends.base import Backend, head_extra_inputs, reject_options
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
    def encode_text_outputs(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        """text_embeds, and, when a head of the spec weighs words, every token's projected feature and the word
        mask (1 after the SOT and before the EOT), over the given L positions, as the exported text encoder."""
        pooled = self.encode_text(input_ids)
        if self.spec is None or "text_token_embeds" not in self.spec.text_graph.output_names:
            return {"text_embeds": pooled}
        model, length = self.clip_model, input_ids.shape[1]
        ids = np.zeros((input_ids.shape[0], self.context_length), dtype=np.int64)
        ids[:, :length] = input_ids[:, : self.context_length]
        tokens = self._tensor(ids)
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        projection = model.text_projection
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        eot_index = np.argmax(input_ids, axis=1)  # the EOT is CLIP's largest id (open_clip pools at the argmax)
        positions = np.arange(length)[None, :]
        mask = ((positions >= 1) & (positions < eot_index[:, None])).astype(np.float32)
        return {"text_embeds": pooled, "text_token_embeds": x[:, :length].float().cpu().numpy(), "token_mask": mask}

    @torch.no_grad()
    def run_head_outputs(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None,
                         extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """logits and probs, plus modality_share (and token_weights, from `extra`'s token features) when the spec's
        head exports them (--explain)."""
        logits, probs = self.run_head(image_embeds, text_embeds, task)
        out = {"logits": logits, "probs": probs}
        spec_head = self.spec.head(task) if self.spec is not None and task is not None else None
        head = self.heads[task] if task is not None else self.head
        image = self._tensor(image_embeds.astype(np.float32, copy=False))
        text = self._tensor(text_embeds.astype(np.float32, copy=False))
        if spec_head is not None and spec_head.explain:
            out["modality_share"] = head.modality_share(image, text).cpu().numpy()
        if spec_head is not None and spec_head.explain_tokens:
            feeds = head_extra_inputs(spec_head.graph_spec(), extra, *text_embeds.shape)
            weights = head.token_weights(image, text, *(self._tensor(feeds[k].astype(np.float32, copy=False))
                                                        for k in ("text_token_embeds", "token_mask")))
            out["token_weights"] = weights.cpu().numpy()
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
