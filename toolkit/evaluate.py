"""Evaluate a run dir on a CrisisMMD split: metrics JSON and a confusion-matrix PNG."""

from __future__ import annotations

from pathlib import Path

from crisis_tool.clip_loader import load_recorded_clip
from crisis_tool.data.crisismmd import load_split, resolve_task
from crisis_tool.data.llava_text import read_llava_file
from crisis_tool.features import FeatureCache
from crisis_tool.run_dir import load_run
from crisis_tool.runtime.charts import heatmap
from crisis_tool.train import DEFAULT_CACHE, predict_logits, report_data_issues, split_report


def evaluate_run(model: Path, data: Path, split: str = "test", llava_file: Path | None = None,
                 cache_dir: Path = DEFAULT_CACHE, skip_bad: bool = False, confusion_png: Path | None = None,
                 log=print, plot_dir: Path | None = None) -> dict:
    """Metrics of every head of a run on its own task's split; optionally draws the confusion matrices.

    Returns the first head's report at the top level (one-head compatibility) and every head's under `tasks`,
    each with accuracy, macro/weighted F1, temperature, ECE (calibrated and not), NLL and review stats.
    """
    run = load_run(model)
    clip = load_recorded_clip(run.config["clip"], run.path)
    llava = read_llava_file(llava_file) if llava_file else None
    splits = run.config.get("data", {}).get("splits", "settingA")
    cache = FeatureCache(cache_dir, clip, log=log)
    reports = {}
    for entry in run.head_entries:
        task = resolve_task(entry["task"])
        labels = list(entry["labels"])
        examples = load_split(data, task, split, splits)
        enc = cache.encode_split(data, examples, run.config["text_source"], llava, labels, skip_bad)
        report_data_issues(f"{task.name} {split}", enc, run.config["text_source"], log)
        report = split_report(run.heads[task.name], enc, labels,
                              {"temperature": entry["temperature"], "review_threshold": entry["review_threshold"]})
        report.update(split=split, task=task.name, model=str(model), skipped_images=len(enc.bad_images))
        reports[task.name] = report
        png = _png_for(confusion_png, task.name, len(run.head_entries))
        if png is not None:
            heatmap(report["confusion_matrix"], labels, labels, png, title=f"{task.name} / {split}: confusion matrix")
            report["confusion_png"] = str(png)
        if plot_dir is not None:
            report["reliability_png"] = str(reliability_plot(run.heads[task.name], enc, entry["temperature"],
                                                             Path(plot_dir) / f"reliability_{task.name}_{split}.png",
                                                             f"{task.name} / {split}"))
    first = next(iter(reports.values()))
    return {**first, "tasks": reports}


def _png_for(path: Path | None, task: str, heads: int) -> Path | None:
    """The confusion-matrix path of one head: `path` itself for one head, `<stem>_<task><suffix>` for several."""
    if path is None or heads == 1:
        return path
    return path.with_name(f"{path.stem}_{task}{path.suffix}")


def reliability_plot(head, enc, temperature: float, path: Path, title: str) -> Path:  # noqa: ANN001
    """A reliability diagram (before and after temperature scaling) of one head on one split."""
    from crisis_tool.runtime.charts import reliability_png
    from crisis_tool.runtime.triage.calibration import reliability_bins, softmax

    logits = predict_logits(head, enc.image_embeds, enc.text_embeds)
    bins = reliability_bins(softmax(logits, temperature), enc.labels)
    return reliability_png(bins, path, title=f"{title}, calibrated (T={temperature:.2f})")
