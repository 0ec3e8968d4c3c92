"""`crisis-tool reproduce`: the paper's ablation table over tasks, configurations and seeds.

CLIP features are cached once (per text source) and shared by every configuration and seed; only the small
heads are trained, so the whole table costs little more than encoding the data set once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from crisis_tool.clip_loader import load_clip
from crisis_tool.data.crisismmd import available_splits, load_split, resolve_task
from crisis_tool.data.llava_text import read_llava_file
from crisis_tool.features import EncodedSplit, FeatureCache
from crisis_tool.models.heads import HeadConfig
from crisis_tool.runtime.charts import bar_chart
from crisis_tool.runtime.errors import DataError
from crisis_tool.train import TrainOptions, evaluate_head, fit_head

METRICS = ("accuracy", "macro_f1", "weighted_f1")


@dataclass(frozen=True)
class Configuration:
    """One row of the ablation: a name, a head, a modality and a text source."""

    name: str
    head: str
    modality: str
    text_source: str


CONFIGURATIONS = (
    Configuration("image-only", "guided", "image", "tweet"),
    Configuration("text-only (tweet)", "guided", "text", "tweet"),
    Configuration("text-only (tweet+llava)", "guided", "text", "tweet+llava"),
    Configuration("guided (tweet)", "guided", "both", "tweet"),
    Configuration("guided (tweet+llava)", "guided", "both", "tweet+llava"),
    Configuration("guided-diff (tweet)", "guided-diff", "both", "tweet"),
    Configuration("guided-diff (tweet+llava)", "guided-diff", "both", "tweet+llava"),
    Configuration("reference (tweet+llava)", "reference", "both", "tweet+llava"),
)


def summarize(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def run_reproduction(data: Path, tasks: list[str], seeds: int, out: Path, opts: TrainOptions,
                     clip_model: str, pretrained: str, llava_file: Path | None, cache_dir: Path,
                     eval_split: str = "test", log=print) -> dict:
    """Train every configuration for every task and seed; write results.{json,md,png} under `out`."""
    clip = load_clip(clip_model, pretrained)
    cache = FeatureCache(cache_dir, clip)
    llava = read_llava_file(llava_file) if llava_file else None
    results: dict = {"clip": clip.describe(), "seeds": seeds, "eval_split": eval_split, "tasks": {}}
    for task_name in tasks:
        task = resolve_task(task_name)
        present = available_splits(data, task, opts.splits)
        split = eval_split if eval_split in present else "dev"
        if "train" not in present or split not in present:
            raise DataError(f"{data}: task {task.name} needs train and {eval_split} (or dev) splits")
        if split != eval_split:
            log(f"{task.name}: no {eval_split} split, reporting on dev")
        classes = list(task.classes)
        encoded: dict[tuple[str, str], EncodedSplit] = {}
        for source in sorted({c.text_source for c in CONFIGURATIONS}):
            for s in {"train", "dev", split}:
                examples = load_split(data, task, s, opts.splits)
                encoded[(source, s)] = cache.encode_split(data, examples, source, llava, classes, opts.skip_bad)
        rows = {}
        for conf in CONFIGURATIONS:
            scores: dict[str, list[float]] = {m: [] for m in METRICS}
            for seed in range(seeds):
                cfg = HeadConfig(num_classes=len(classes), clip_embed_dim=clip.embed_dim, head=conf.head,
                                 modality=conf.modality)
                head, _ = fit_head(cfg, encoded[(conf.text_source, "train")], encoded[(conf.text_source, "dev")],
                                   classes, replace(opts, seed=seed), log=lambda _m: None)
                report = evaluate_head(head, encoded[(conf.text_source, split)], classes)
                for m in METRICS:
                    scores[m].append(report[m])
            rows[conf.name] = {m: summarize(v) for m, v in scores.items()}
            log(f"{task.name:13s} {conf.name:26s} " + "  ".join(
                f"{m} {rows[conf.name][m]['mean']:.4f}±{rows[conf.name][m]['std']:.4f}" for m in METRICS))
        results["tasks"][task.name] = {"split": split, "rows": rows}
    write_results(results, out)
    return results


def results_markdown(results: dict) -> str:
    lines = [f"CLIP {results['clip']['model_name']} ({results['clip']['pretrained']}), "
             f"{results['seeds']} seeds, mean ± std on the {results['eval_split']} split", ""]
    lines.append("| task | configuration | accuracy | macro-F1 | weighted-F1 |")
    lines.append("|---|---|---|---|---|")
    for task, block in results["tasks"].items():
        for name, row in block["rows"].items():
            cells = " | ".join(f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in METRICS)
            lines.append(f"| {task} ({block['split']}) | {name} | {cells} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    groups = {task: {name: (row["macro_f1"]["mean"], row["macro_f1"]["std"]) for name, row in block["rows"].items()}
              for task, block in results["tasks"].items()}
    bar_chart(groups, out / "results.png", title="Macro-F1 by task and configuration (mean ± std over seeds)",
              ylabel="macro-F1")
