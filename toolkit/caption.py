"""LLaVA text enrichment: describe every CrisisMMD image once, resumably, into a JSONL file.

Output rows (one JSON object per line, appended and flushed per batch)::

    {"image_id": ..., "llava_text": ... | null, "model": ..., "prompt_sha256": ..., "error": null | "message"}

Resume rule: a rerun keeps the successful rows, drops the error rows (those images are retried) and
captions only the image_ids that are still missing, so a crash or Ctrl-C loses at most one batch.
A file written with another model or prompt is refused rather than mixed.

`crisis_tool.data.llava_text.read_llava_file` reads this JSONL back (training's `--llava-file`).
torch and transformers are imported only by `load_captioner`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisis_tool.data.llava_text import parse_jsonl
from crisis_tool.runtime.errors import DataError, MissingDependencyError, UsageError
from crisis_tool.runtime.file_guard import UnsafeFileError, read_capped

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
DEFAULT_PROMPT_FILE = Path(__file__).resolve().parent / "prompts" / "llava_default.txt"
DEFAULT_SPLITS = ("train", "dev", "test")
IMAGE_TOKEN = "<image>"
MAX_PROMPT_BYTES = 1 << 20  # a prompt is a few hundred bytes; refuse anything that is not a small regular file
PLACEHOLDER = re.compile(r"\{(tweet|event|image_id|tweet_id)\}")
ROW_KEYS = ("image_id", "llava_text", "model", "prompt_sha256", "error")


@dataclass(frozen=True)
class Prompt:
    """A prompt template; `{tweet}`, `{event}`, `{image_id}` and `{tweet_id}` are filled per image."""

    template: str
    sha256: str  # of the prompt file's bytes (check with `sha256sum FILE`)
    path: Path

    def render(self, tweet: str, **fields: str) -> str:
        """Fill the placeholders in one pass; `<image>` inside the tweet is neutralised."""
        values = {"event": "", "image_id": "", "tweet_id": "", **fields, "tweet": tweet}
        values = {k: " ".join(v.replace(IMAGE_TOKEN, "image").split()) for k, v in values.items()}
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)


@dataclass(frozen=True)
class CaptionItem:
    """One unique image to describe, with the first tweet that carried it."""

    image_id: str
    image_path: Path
    tweet: str
    tweet_id: str = ""
    event: str = ""


@dataclass
class CaptionSummary:
    """What a run did: rows generated now, errors recorded now, images already done before."""

    total: int = 0
    already_done: int = 0
    generated: int = 0
    errors: int = 0


def load_prompt(path: str | Path | None = None) -> Prompt:
    """Read a prompt file (default: the packaged LLaVA-1.5 prompt); it must contain `<image>`."""
    path = Path(path) if path is not None else DEFAULT_PROMPT_FILE
    try:
        raw = read_capped(path, MAX_PROMPT_BYTES)
    except UnsafeFileError as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc.reason}") from None
    template = raw.decode("utf-8", errors="replace").strip()
    if template.count(IMAGE_TOKEN) != 1:
        raise UsageError(f"prompt file {path} must contain the {IMAGE_TOKEN} placeholder exactly once")
    return Prompt(template=template, sha256=hashlib.sha256(raw).hexdigest(), path=path)


def collect_items(
    root: str | Path, task: str, splits: Sequence[str] | None = None, split_set: str = "settingA"
) -> list[CaptionItem]:
    """Unique images (first tweet wins) of the given splits, default: train, dev, test, whichever exist."""
    from crisis_tool.data.crisismmd import available_splits, load_split, resolve_task, split_path

    root, spec = Path(root), resolve_task(task)
    chosen = list(splits) if splits else available_splits(root, spec, split_set)
    if not chosen:
        missing = split_path(root, spec, DEFAULT_SPLITS[0], split_set)
        raise DataError(f"no {spec.name} split files under {root} (looked for e.g. {missing})")
    items: dict[str, CaptionItem] = {}
    for split in chosen:
        for ex in load_split(root, spec, split, split_set):
            if ex.image_id not in items:
                items[ex.image_id] = CaptionItem(ex.image_id, root / ex.image, ex.text, ex.tweet_id, ex.event)
    return list(items.values())


def prepare_output(out: Path, model: str, prompt_sha256: str) -> set[str]:
    """Make `out` ready to append to and return the image_ids already captioned successfully.

    Error rows and a truncated last line are dropped (rewritten atomically) so those images are retried.
    """
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        return set()
    keep: dict[str, dict[str, Any]] = {}
    dropped = 0
    for n, row in parse_jsonl(out):
        if "image_id" not in row:
            raise DataError(f"{out}:{n}: row has no image_id; not a caption file")
        for key in ("model", "prompt_sha256"):
            want = model if key == "model" else prompt_sha256
            if row.get(key) != want:
                raise UsageError(
                    f"{out} holds rows made with {key}={row.get(key)!r}, not {want!r}; "
                    "use another --out or delete the file"
                )
        if row.get("error") is None and str(row["image_id"]) not in keep:
            keep[str(row["image_id"])] = row
        else:
            dropped += 1
    text = out.read_text(encoding="utf-8")
    if dropped or (text and not text.endswith("\n")):
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep.values()), encoding="utf-8"
        )
        os.replace(tmp, out)
    return set(keep)


def make_row(image_id: str, text: str | None, model: str, prompt_sha256: str, error: str | None) -> dict:
    """One output row in the documented schema."""
    return dict(zip(ROW_KEYS, (image_id, text, model, prompt_sha256, error), strict=True))


class Captioner:
    """A loaded LLaVA model + processor that describes batches of images greedily."""

    def __init__(self, model: Any, processor: Any, device: str, max_new_tokens: int = 96) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.max_new_tokens = max_new_tokens
        tok = processor.tokenizer
        tok.padding_side = "left"  # decoder-only batched generation needs left padding
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token

    def generate(self, images: Sequence[Any], prompts: Sequence[str]) -> list[str]:
        """Greedy (deterministic) descriptions, one per (image, prompt)."""
        import torch

        inputs = self.processor(images=list(images), text=list(prompts), return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def resolve_model_dir(model: str) -> Path:
    """A local directory holding the model: the path itself, or the Hugging Face cache snapshot.

    Never touches the network when HF_HUB_OFFLINE=1; otherwise downloads only when not cached.
    """
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        if not (path / "config.json").is_file():
            raise UsageError(f"no LLaVA model at {path} (expected a directory with config.json)")
        return path
    from huggingface_hub import constants, snapshot_download

    cache = constants.HF_HUB_CACHE
    hint = f"pass a local directory with --model PATH, or run `hf download {model}` while online"
    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached (or a broken cache): decide below
        pass
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        raise UsageError(
            f"model {model!r} is neither a local directory nor in the Hugging Face cache ({cache}) "
            f"and HF_HUB_OFFLINE=1; {hint}"
        )
    try:
        return Path(
            snapshot_download(
                model, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
            )
        )
    except Exception as exc:  # network, auth or unknown repo: one clear line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"cannot get model {model!r} (not in cache {cache}; download failed: {reason}); {hint}"
        ) from None


def pick_device(device: str) -> str:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a missing dependency."""
    import torch

    if device not in {"auto", "cpu", "cuda"}:
        raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("--device cuda was asked for but torch sees no CUDA GPU")
    return device


def load_captioner(model: str, device: str = "auto", max_new_tokens: int = 96) -> Captioner:
    """Load LLaVA (fp16 on a GPU, fp32 on CPU) from a local path or the Hugging Face cache/hub."""
    import torch
    import transformers
    from packaging.version import Version
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    device = pick_device(device)
    model_dir = resolve_model_dir(model)
    dtype = torch.float16 if device == "cuda" else torch.float32
    old_api = Version(transformers.__version__) < Version("4.56")  # `dtype` replaced `torch_dtype` there
    dtype_kw = {"torch_dtype" if old_api else "dtype": dtype}
    try:
        processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        net = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True, **dtype_kw)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load LLaVA model from {model_dir}: {reason}") from None
    return Captioner(net.to(device).eval(), processor, device, max_new_tokens)


def _load_batch(items: Sequence[CaptionItem]) -> tuple[list[tuple[CaptionItem, Any]], list[tuple[str, str]]]:
    """Open a batch's images; unreadable ones become (image_id, message) errors."""
    from crisis_tool.runtime.preprocess import load_image

    ok: list[tuple[CaptionItem, Any]] = []
    failed: list[tuple[str, str]] = []
    for item in items:
        try:
            ok.append((item, load_image(item.image_path)))
        except (DataError, OSError, ValueError) as exc:
            failed.append((item.image_id, str(exc) or type(exc).__name__))
    return ok, failed


def caption_items(
    items: Sequence[CaptionItem],
    captioner: Captioner,
    out: str | Path,
    model: str,
    prompt: Prompt,
    batch_size: int = 8,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> CaptionSummary:
    """Caption the items not yet done in `out`, appending one flushed batch of rows at a time.

    `on_batch(n_batches_written)` runs after each batch is on disk (tests use it to simulate a crash).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, not {batch_size}")
    out = Path(out)
    done = prepare_output(out, model, prompt.sha256)
    todo = [it for it in items if it.image_id not in done]
    summary = CaptionSummary(total=len(items), already_done=len(items) - len(todo))
    console = Console(stderr=True)
    columns = (
        TextColumn("captioning"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    show = progress and console.is_terminal
    with Progress(*columns, console=console, disable=not show) as bar, out.open("a", encoding="utf-8") as fh:
        task = bar.add_task("caption", total=len(todo))
        for n, start in enumerate(range(0, len(todo), batch_size), 1):
            loaded, failed = _load_batch(todo[start : start + batch_size])
            rows = [make_row(i, None, model, prompt.sha256, msg) for i, msg in failed]
            if loaded:
                prompts = [
                    prompt.render(it.tweet, event=it.event, image_id=it.image_id, tweet_id=it.tweet_id)
                    for it, _ in loaded
                ]
                texts = captioner.generate([img for _, img in loaded], prompts)
                rows += [
                    make_row(it.image_id, t, model, prompt.sha256, None)
                    for (it, _), t in zip(loaded, texts, strict=True)
                ]
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())
            summary.generated += len(loaded)
            summary.errors += len(failed)
            bar.advance(task, len(rows))
            if on_batch is not None:
                on_batch(n)
    return summary
