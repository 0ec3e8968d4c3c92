"""Head training on cached CLIP features (the encoders are frozen).

Defaults follow the paper's code: SGD lr 1e-3, batch 32, ReduceLROnPlateau(factor 0.1, patience 5) on the dev
loss, and early stopping on the dev set (best dev macro-F1 is kept). Deterministic under a seed on the CPU.
"""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crisis_tool import __version__
from crisis_tool.clip_loader import load_clip
from crisis_tool.data.crisismmd import TaskSpec, available_splits, load_split
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


def calibrate_head(head: nn.Module, dev: EncodedSplit, review_precision: float = 0.9,
                   review_threshold: float | None = None) -> dict:
    """Fit the head's temperature on dev (NLL) and choose its review threshold there.

    The threshold is `review_threshold` when given, else the lowest calibrated dev confidence at which the
    accepted dev posts reach `review_precision` (`choose_review_threshold`).
    """
    from crisis_tool.calibration_fit import calibration_report, fit_temperature
    from crisis_tool.runtime.triage.calibration import softmax
    from crisis_tool.runtime.triage.review_threshold import check_review_threshold, choose_review_threshold

    logits = predict_logits(head, dev.image_embeds, dev.text_embeds)
    if len(dev.labels) == 0:
        return {"temperature": 1.0, "review_threshold": review_threshold, "dev": None}
    temperature = fit_temperature(logits, dev.labels)
    probs = softmax(logits, temperature)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == dev.labels
    if review_threshold is not None:
        threshold = check_review_threshold(review_threshold)
    else:
        threshold = choose_review_threshold(confidence, correct, review_precision)
    return {"temperature": round(temperature, 6), "review_threshold": round(float(threshold), 6),
            "dev": calibration_report(logits, dev.labels, temperature).to_dict()}


def split_report(head: nn.Module, split: EncodedSplit, classes: list[str], calibration: dict) -> dict:
    """Task metrics of a head on a split, with ECE/NLL before and after calibration and review stats."""
    from crisis_tool.calibration_fit import calibration_report
    from crisis_tool.runtime.triage.calibration import softmax
    from crisis_tool.runtime.triage.review_threshold import review_stats

    report = evaluate_head(head, split, classes)
    if len(split.labels):
        logits = predict_logits(head, split.image_embeds, split.text_embeds)
        cal = calibration_report(logits, split.labels, calibration["temperature"])
        report |= {"temperature": cal.temperature, "ece": cal.ece_after, "ece_uncalibrated": cal.ece_before,
                   "nll": cal.nll_after, "nll_uncalibrated": cal.nll_before}
        if calibration.get("review_threshold") is not None:
            probs = softmax(logits, calibration["temperature"])
            stats = review_stats(probs.max(axis=1), probs.argmax(axis=1) == split.labels,
                                 calibration["review_threshold"])
            report["review"] = {"threshold": stats.threshold, "share_flagged": stats.share_flagged,
                                "unflagged_accuracy": stats.unflagged_accuracy, "flagged": stats.flagged}
    return report


def train(data: Path, task: TaskSpec | list[TaskSpec], out: Path, opts: TrainOptions,
          clip_model: str = DEFAULT_CLIP_MODEL, pretrained: str = DEFAULT_PRETRAINED,
          llava_file: Path | None = None, cache_dir: Path = DEFAULT_CACHE, log=print,
          corrections: list[Path] | None = None) -> dict:
    """Encode (cached, once per unique image and text for every task) and train one head per task.

    Each head trains on its own task's train split, stops early on its own dev split, is calibrated there
    (temperature and review threshold), and is reported on its dev and (when present) test split. Human
    labels from `corrections` files replace the split labels by (id, task).
    """
    tasks = task if isinstance(task, list) else [task]
    if opts.text_source not in TEXT_SOURCES:
        raise UsageError(f"unknown --text {opts.text_source!r} (choose from {', '.join(TEXT_SOURCES)})")
    check_writable_dir(out, "--out")  # fail now, not after the last epoch
    check_writable_dir(cache_dir, "--cache-dir")
    human = read_corrections(corrections) if corrections else None
    splits = {t.name: {s: load_split(data, t, s, opts.splits) for s in available_splits(data, t, opts.splits)}
              for t in tasks}
    for t in tasks:
        for needed in ("train", "dev"):
            if needed not in splits[t.name]:
                raise UsageError(f"{data}: no {needed} split for task {t.name} ({opts.splits})")
    clip = load_clip(clip_model, pretrained)
    llava = read_llava_file(llava_file) if llava_file else None
    cache = FeatureCache(cache_dir, clip, log=log)
    heads, entries, per_task = {}, [], {}
    for t in tasks:
        classes = list(t.classes)
        encoded = {}
        merge_note: dict[str, set[str]] | None = None
        for split, examples in splits[t.name].items():
            if human is not None and split in ("train", "dev"):
                examples, used, changed = apply_corrections(examples, t.name, classes, human)
                merge_note = merge_note or {"used": set(), "changed": set()}
                merge_note["used"] |= used  # record ids: a post in two splits counts once
                merge_note["changed"] |= changed
            encoded[split] = cache.encode_split(data, examples, opts.text_source, llava, classes, opts.skip_bad)
            report_data_issues(f"{t.name} {split}", encoded[split], opts.text_source, log)
        check_llava_coverage(t.name, encoded["train"], opts.text_source)
        human_labels = None
        if merge_note is not None:
            human_labels = {"used": len(merge_note["used"]), "changed": len(merge_note["changed"])}
            log(f"{t.name}: human labels: {human_labels['used']} used, {human_labels['changed']} changed")
        cfg = HeadConfig(num_classes=len(classes), clip_embed_dim=clip.embed_dim, head=opts.head,
                         modality=opts.modality)
        log(f"training the {t.name} head ({len(encoded['train'].labels)} train, {len(encoded['dev'].labels)} dev)")
        head, history = fit_head(cfg, encoded["train"], encoded["dev"], classes, opts, log)
        calibration = calibrate_head(head, encoded["dev"], opts.review_precision, opts.review_threshold)
        reports = {split: split_report(head, enc, classes, calibration) for split, enc in encoded.items()
                   if split != "train"}
        per_task[t.name] = {**reports, "calibration": calibration, "history": history,
                            "n_train": len(encoded["train"].labels), **({"human_labels": human_labels}
                                                                         if human_labels else {})}
        heads[t.name] = head
        entries.append({"task": t.name, "labels": classes, "head": cfg.to_dict(),
                        "temperature": calibration["temperature"],
                        "review_threshold": calibration["review_threshold"]})
    first = per_task[tasks[0].name]
    metrics = {"tasks": per_task, "dev": first["dev"], "history": first["history"], "n_train": first["n_train"]}
    config = {
        "crisis_tool_version": __version__,
        "heads": entries,
        "text_source": opts.text_source,
        "clip": clip.describe(),
        "preprocess": clip.preprocess.to_dict(),
        "training": {k: v for k, v in vars(opts).items()},
        "data": {"root": str(data), "splits": opts.splits, "llava_file": str(llava_file) if llava_file else None,
                 "corrections": [str(c) for c in corrections or []]},
    }
    save_run(out, heads, config, metrics)
    return metrics


def check_llava_coverage(task: str, train_split: EncodedSplit, text_source: str) -> None:
    """UsageError when a LLaVA text recipe found no caption for any training record."""
    n = len(train_split.labels)
    if text_source != "tweet" and n and train_split.missing_llava >= n:
        raise UsageError(f"--text {text_source}: no LLaVA caption was found for any of the {n} {task} training "
                         "records; pass --llava-file (as `crisis-tool caption` writes) or use --text tweet")


def read_corrections(paths: list[Path]) -> list:
    """Every decision of the corrections files, in order (a later file's decision wins)."""
    from crisis_tool.corrections import read_corrections_files

    return read_corrections_files(paths)


def apply_corrections(examples: list, task: str, classes: list[str], corrections: list
                      ) -> tuple[list, set[str], set[str]]:
    """(examples with the human labels of `task` laid over theirs by id, the ids whose decision was used, the ids
    whose label it changed).

    A decision naming a label this task does not have is a one-line DataError naming its file and line.
    """
    from crisis_tool.corrections import merge_corrections

    mine = [c for c in corrections if c.task == task]
    labels = {(str(ex.image_id), task): ex.label for ex in examples}
    result = merge_corrections(labels, mine, {task: classes})
    out = [replace(ex, label=result.merged[(str(ex.image_id), task)]) for ex in examples]
    used = {rid for rid, _ in labels if (rid, task) in {c.key for c in mine}}
    changed = {str(ex.image_id) for ex, new in zip(examples, out, strict=True) if ex.label != new.label}
    return out, used, changed


def report_data_issues(split: str, enc: EncodedSplit, text_source: str, log=print) -> None:
    if enc.bad_images:
        log(f"{split}: skipped {len(enc.bad_images)} rows with missing or unreadable images "
            f"(first: {enc.bad_images[0][0]})")
    if enc.missing_llava:
        log(f"{split}: {enc.missing_llava} rows have no LLaVA caption; text source {text_source} falls back to "
            "their cleaned tweet (as predict does)")
