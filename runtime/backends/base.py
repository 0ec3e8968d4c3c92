"""The backend interface: a bundle's graphs behind one class that declares every hook, with defaults.

A backend runs the image encoder, the text encoder and each task's fusion head (`run_head(..., task)`) of a
bundle on numpy arrays; which graphs exist comes from the bundle's model spec. The optional hooks have
working defaults, so a new backend overrides only what it has:
`engine_batch_limit` (a fixed engine profile), `unavailable_reason()` (a missing package or GPU, asked before loading),
`bundle_unavailable_reason()` (the bundle lacks this backend's files for a precision),
`from_bundle()` (how it is built; the options it declares are what `takes_option` answers, and any other
is a UsageError), `synchronize()` and `h2d_seconds` (GPU timing for bench), `files()` (what bench reports as
the model size), `peak_probe()` (the engine's MatMul peak, bench's roofline; see `peak_probe`), `close()`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.model_spec import GraphSpec

if TYPE_CHECKING:
    from crisis_tool.runtime.backends.peak_probe import PeakProbe
    from crisis_tool.runtime.bundle import Bundle


class Backend(ABC):
    """Runs a bundle's image encoder, text encoder and fusion head.

    `name` is the registry name, `precision` the graph variant in use (fp32|fp16|int8) and `provider` what
    really executes it (e.g. "CPUExecutionProvider" even when TensorRT was requested but is unusable).
    Implementations must be safe to call from several threads at once.
    """

    name: str = "backend"
    precision: str = "fp32"
    provider: str = "unknown"
    engine_batch_limit: int | None = None  # the largest batch the engine accepts (None: any)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this machine can run the backend (packages, devices), else a one-line reason."""
        return None

    @classmethod
    def bundle_unavailable_reason(cls, bundle: Bundle, precision: str) -> str | None:
        """None when `bundle` holds what this backend runs at `precision`, else why not (one line)."""
        return None

    @classmethod
    def from_bundle(cls, bundle: Bundle, precision: str | None = None, threads: int | None = None,
                    **options: Any) -> Backend:
        """Build the backend for `bundle`. `threads` is a hint CPU backends use and others ignore.

        Options left at None count as not given; any other option this backend does not declare is a
        UsageError. Backends with options override this and declare them as keyword arguments.
        """
        reject_options(cls.name, options)
        return cls(bundle, precision=precision)

    @classmethod
    def takes_option(cls, name: str) -> bool:
        """True when `from_bundle` declares option `name` (e.g. "device") as a keyword argument."""
        parameter = inspect.signature(cls.from_bundle).parameters.get(name)
        return parameter is not None and parameter.kind is not inspect.Parameter.VAR_KEYWORD

    def __init__(self, bundle: Bundle, precision: str | None = None) -> None:
        """The default constructor (what the default `from_bundle` calls): runs `precision`, else the bundle's."""
        self.precision = precision or bundle.precision

    @abstractmethod
    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 [B,3,H,W] -> image embeddings float32 [B,D]."""

    @abstractmethod
    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        """int64 [B,L] (L <= context length) -> text embeddings float32 [B,D]."""

    @abstractmethod
    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Task `task`'s fusion head (None: the first head): embeddings [B,D] x2 -> (logits [B,C], probs [B,C])."""

    def encode_text_outputs(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the text encoder by name: text_embeds, and for a bundle whose heads weigh words
        (--explain) text_token_embeds [B,L,D] and token_mask [B,L]. Default: text_embeds from `encode_text`."""
        return {"text_embeds": self.encode_text(input_ids)}

    def run_head_outputs(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None,
                         extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every output of a head graph by name (logits, probs, and modality_share / token_weights for an
        --explain bundle); `extra` feeds a head's further inputs by name (text_token_embeds, token_mask).

        Default: logits and probs from `run_head`; backends that run the graph itself return all its outputs.
        """
        logits, probs = self.run_head(image_embeds, text_embeds, task)
        return {"logits": logits, "probs": probs}

    def synchronize(self) -> None:  # noqa: B027 - optional hook, nothing to wait for on the CPU
        """Wait until queued device work is done (bench stops its clock after this). CPU backends: no-op."""

    @property
    def h2d_seconds(self) -> float | None:
        """Cumulative host-to-device copy time so far (GPU backends), else None."""
        return None

    def files(self) -> list[Path]:
        """The bundle files this backend runs (bench's size column). Default: none known."""
        return []

    def peak_probe(self) -> PeakProbe | None:
        """A large MatMul on this engine, session type and precision (bench's "% of peak"); None: unknown."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, engines and device memory."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.provider})"


def head_extra_inputs(graph: GraphSpec, extra: Mapping[str, np.ndarray] | None, batch: int, dim: int
                      ) -> dict[str, np.ndarray]:
    """The head graph's inputs beyond (image_embeds, text_embeds), by name from `extra`. A head that weighs words
    run without them (`run_head`, logits only) is fed "no words": one masked position, which changes no logit."""
    names = graph.input_names[2:]
    if extra is not None and all(n in extra for n in names):
        return {n: extra[n] for n in names}
    none = {"text_token_embeds": np.zeros((batch, 1, dim), np.float32), "token_mask": np.zeros((batch, 1), np.float32)}
    return {n: none[n] for n in names}


def head_feeds(graph: GraphSpec, image_embeds: np.ndarray, text_embeds: np.ndarray,
               extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every input of a head graph by name: the two embeddings and, for a head that weighs words, `extra`'s."""
    feeds = {graph.input_names[0]: image_embeds, graph.input_names[1]: text_embeds}
    if len(graph.inputs) > 2:
        feeds |= head_extra_inputs(graph, extra, int(text_embeds.shape[0]), int(text_embeds.shape[-1]))
    return feeds


def reject_options(backend: str, options: dict[str, Any]) -> None:
    """UsageError naming the options (not None) that backend `backend` does not take."""
    given = sorted(key for key, value in options.items() if value is not None)
    if given:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in given)
        raise UsageError(f"backend {backend!r} does not take {flags}")
