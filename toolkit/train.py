"""Head training on cached CLIP features (the encoders are frozen).

Defaults follow the paper's code: SGD lr 1e-3, batch 32, ReduceLROnPlateau(factor 0.1, patience 5) on the dev
loss, and early stopping on the dev set (best dev macro-F1 is kept). Deterministic under a seed on the CPU.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crisis_tool import __version__
from crisis_tool.clip_loader import load_clip
from crisis_tool.data.crisismmd import TaskSpec, load_split
from crisis_tool.data.llava_text import read_llava_file
from crisis_tool.features import EncodedSplit, FeatureCache
from crisis_tool.metrics import classification_report
from crisis_tool.models.heads import HeadConfig, build_head
from crisis_tool.run_dir import save_run
from crisis_tool.runtime.atomic_files import check_writable_dir
from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.text_clean import TEXT_SOURCES
from crisis_tool.train_options import DEFAULT_CACHE, DEFAULT_CLIP_MODEL, DEFAULT_PRETRAINED, TrainOptions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def evaluate_head(head: nn.Module, split: EncodedSplit, classes: list[str], batch_size: int = 256) -> dict:
    """Metrics and mean loss of a head on encoded features (eval mode, batch independent)."""
    head.eval()
    logits = predict_logits(head, split.image_embeds, split.text_embeds, batch_size)
    loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(split.labels)))
    report = classification_report(split.labels, logits.argmax(1), classes)
    report["loss"] = loss
    return report


def predict_logits(head: nn.Module, image_embeds: np.ndarray, text_embeds: np.ndarray, batch_size: int = 256):
    out = []
    with torch.inference_mode():
        for s in range(0, len(image_embeds), batch_size):
            out.append(head(torch.from_numpy(image_embeds[s : s + batch_size]),
                            torch.from_numpy(text_embeds[s : s + batch_size])).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fit_head(cfg: HeadConfig, train: EncodedSplit, dev: EncodedSplit, classes: list[str], opts: TrainOptions,
             log=print) -> tuple[nn.Module, list[dict]]:
    """Train a head with early stopping on dev macro-F1; returns the best head and the epoch history."""
    seed_everything(opts.seed)
    head = build_head(cfg)
    params = [p for p in head.parameters() if p.requires_grad]
    if opts.optimizer == "sgd":
        optim = torch.optim.SGD(params, lr=opts.lr, weight_decay=opts.weight_decay)
    elif opts.optimizer == "adamw":
        optim = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay or 1e-2)
    else:
        raise UsageError(f"unknown --optimizer {opts.optimizer!r} (sgd or adamw)")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optim, factor=0.1, patience=5)
    gen = torch.Generator().manual_seed(opts.seed)
    x_img, x_txt = torch.from_numpy(train.image_embeds), torch.from_numpy(train.text_embeds)
    y = torch.from_numpy(train.labels)
    best, best_state, since_best, history = -1.0, copy.deepcopy(head.state_dict()), 0, []
    for epoch in range(1, opts.epochs + 1):
        head.train()
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for s in range(0, len(y), opts.batch_size):
            idx = order[s : s + opts.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = nn.functional.cross_entropy(head(x_img[idx], x_txt[idx]), y[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item() * len(idx)
        dev_report = evaluate_head(head, dev, classes)
        lr = optim.param_groups[0]["lr"]  # the rate this epoch trained with
        sched.step(dev_report["loss"])
        history.append({"epoch": epoch, "lr": lr, "train_loss": total / max(len(y), 1), "dev_loss": dev_report["loss"],
                        "dev_accuracy": dev_report["accuracy"], "dev_macro_f1": dev_report["macro_f1"]})
        log(f"epoch {epoch:3d}  train loss {history[-1]['train_loss']:.4f}  dev loss {dev_report['loss']:.4f}  "
            f"dev acc {dev_report['accuracy']:.4f}  dev macro-F1 {dev_report['macro_f1']:.4f}")
        if dev_report["macro_f1"] > best:
            best, best_state, since_best = dev_report["macro_f1"], copy.deepcopy(head.state_dict()), 0
        else:
            since_best += 1
            if since_best >= opts.early_stop:
                log(f"early stop after epoch {epoch} (no dev improvement for {opts.early_stop} epochs)")
                break
    head.load_state_dict(best_state)
    return head.eval(), history


def train(data: Path, task: TaskSpec, out: Path, opts: TrainOptions, clip_model: str = DEFAULT_CLIP_MODEL,
          pretrained: str = DEFAULT_PRETRAINED, llava_file: Path | None = None, cache_dir: Path = DEFAULT_CACHE,
          log=print) -> dict:
    """Encode (cached) and train; writes the run dir and returns its metrics."""
    if opts.text_source not in TEXT_SOURCES:
        raise UsageError(f"unknown --text {opts.text_source!r} (choose from {', '.join(TEXT_SOURCES)})")
    check_writable_dir(out, "--out")  # fail now, not after the last epoch
    check_writable_dir(cache_dir, "--cache-dir")
    clip = load_clip(clip_model, pretrained)
    llava = read_llava_file(llava_file) if llava_file else None
    cache = FeatureCache(cache_dir, clip, log=log)
    classes = list(task.classes)
    encoded = {}
    for split in ("train", "dev"):
        examples = load_split(data, task, split, opts.splits)
        encoded[split] = cache.encode_split(data, examples, opts.text_source, llava, classes, opts.skip_bad)
        report_data_issues(split, encoded[split], opts.text_source, log)
    cfg = HeadConfig(num_classes=len(classes), clip_embed_dim=clip.embed_dim, head=opts.head, modality=opts.modality)
    head, history = fit_head(cfg, encoded["train"], encoded["dev"], classes, opts, log)
    metrics = {"dev": evaluate_head(head, encoded["dev"], classes), "history": history,
               "n_train": len(encoded["train"].labels)}
    config = {
        "crisis_tool_version": __version__,
        "task": task.name,
        "labels": classes,
        "text_source": opts.text_source,
        "head": cfg.to_dict(),
        "clip": clip.describe(),
        "preprocess": clip.preprocess.to_dict(),
        "training": dict(vars(opts)),
        "data": {"root": str(data), "splits": opts.splits, "llava_file": str(llava_file) if llava_file else None},
    }
    save_run(out, head, config, metrics)
    return metrics


def report_data_issues(split: str, enc: EncodedSplit, text_source: str, log=print) -> None:
    if enc.bad_images:
        log(f"{split}: skipped {len(enc.bad_images)} rows with missing or unreadable images "
            f"(first: {enc.bad_images[0][0]})")
    if enc.missing_llava:
        log(f"{split}: {enc.missing_llava} rows have no LLaVA caption; text source {text_source} falls back to "
            "their cleaned tweet (as predict does)")
