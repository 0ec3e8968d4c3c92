"""Evaluate a run dir on a CrisisMMD split: metrics JSON and a confusion-matrix PNG."""

from __future__ import annotations

from pathlib import Path

from crisis_tool.clip_loader import load_recorded_clip
from crisis_tool.data.crisismmd import load_split, resolve_task
from crisis_tool.data.llava_text import read_llava_file
from crisis_tool.features import FeatureCache
from crisis_tool.run_dir import load_run
from crisis_tool.runtime.charts import heatmap
from crisis_tool.train import DEFAULT_CACHE, evaluate_head, report_data_issues


def evaluate_run(model: Path, data: Path, split: str = "test", llava_file: Path | None = None,
                 cache_dir: Path = DEFAULT_CACHE, skip_bad: bool = False, confusion_png: Path | None = None,
                 log=print) -> dict:
    """Metrics of a trained head on a split; optionally draws the confusion matrix."""
    run = load_run(model)
    task = resolve_task(run.config["task"])
    clip = load_recorded_clip(run.config["clip"], run.path)
    llava = read_llava_file(llava_file) if llava_file else None
    splits = run.config.get("data", {}).get("splits", "settingA")
    examples = load_split(data, task, split, splits)
    cache = FeatureCache(cache_dir, clip, log=log)
    enc = cache.encode_split(data, examples, run.config["text_source"], llava, run.labels, skip_bad)
    report_data_issues(split, enc, run.config["text_source"], log)
    report = evaluate_head(run.head, enc, run.labels)
    report.update(split=split, task=task.name, model=str(model), skipped_images=len(enc.bad_images))
    if confusion_png is not None:
        heatmap(report["confusion_matrix"], run.labels, run.labels, confusion_png,
                title=f"{task.name} / {split}: confusion matrix")
    return report
