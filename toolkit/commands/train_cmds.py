"""`crisis-tool train` and `crisis-tool evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from crisis_tool.runtime.atomic_files import atomic_write_text
from crisis_tool.runtime.errors import UsageError
from crisis_tool.train_options import DEFAULT_CLIP_MODEL, DEFAULT_PRETRAINED
from crisis_tool.train_options import TRAIN_DEFAULTS as D


def _print_report(report: dict) -> None:
    from rich.table import Table

    from crisis_tool.commands.console import stdout_console

    calibration = (f"\nECE {report['ece_uncalibrated']:.4f} -> {report['ece']:.4f} (T={report['temperature']:.3f})"
                   if "ece" in report else "")
    review = report.get("review")
    if review:
        accuracy = review["unflagged_accuracy"]
        calibration += (f"  review: {review['share_flagged']:.1%} flagged, unflagged accuracy "
                        f"{'-' if accuracy is None else f'{accuracy:.4f}'}")
    table = Table(title=f"{report.get('task', '')} {report.get('split', '')}: n={report['n']}  "
                        f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
                        f"weighted-F1 {report['weighted_f1']:.4f}{calibration}")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, m in report["per_class"].items():
        table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    stdout_console().print(table)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        data: Path = typer.Option(..., "--data", help="CrisisMMD_v2.0 folder (split TSVs + data_image/)."),
        task: str = typer.Option(..., "--task", help="informative | humanitarian | damage (or task1..task3), a "
                                 "comma-separated list, or all: one head per task in one run."),
        out: Path = typer.Option(..., "--out", help="Run dir to write."),
        head: str = typer.Option(D["head"], help="guided | guided-diff | reference (authors' code)."),
        modality: str = typer.Option(D["modality"], help="both | image | text."),
        text: str = typer.Option(D["text_source"], "--text", help="tweet | llava | tweet+llava."),
        llava_file: Path | None = typer.Option(None, help="LLaVA texts (caption JSONL or TSV with LLaVA_text)."),
        clip_model: str = typer.Option(DEFAULT_CLIP_MODEL, help="OpenCLIP architecture (crisis-tiny for tests)."),
        pretrained: str = typer.Option(DEFAULT_PRETRAINED, help="OpenCLIP tag, checkpoint path, or none (random)."),
        splits: str = typer.Option(D["splits"], help="settingA | all | agreed_label."),
        optimizer: str = typer.Option(D["optimizer"], help="sgd (paper) | adamw."),
        lr: float = typer.Option(D["lr"], help="Learning rate."),
        batch_size: int = typer.Option(D["batch_size"], help="Batch size."),
        epochs: int = typer.Option(D["epochs"], help="Maximum epochs."),
        early_stop: int = typer.Option(D["early_stop"], help="Stop after this many epochs without dev improvement."),
        seed: int = typer.Option(D["seed"], help="Random seed (deterministic on the CPU)."),
        cache_dir: Path | None = typer.Option(None, help="Feature cache (default ~/.cache/crisis-tool/features)."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop rows with missing/unreadable images."),
        labels: list[Path] = typer.Option(
            [], "--labels", help="Human corrections (corrections.jsonl from `crisis-tool review`); repeatable. "
                                 "They replace the split labels by id and task."),
        review_precision: float = typer.Option(
            D["review_precision"], "--review-precision", min=0.0, max=1.0,
            help="Review threshold per head: the lowest calibrated confidence at which the accepted dev posts "
                 "reach this precision."),
        review_threshold: float | None = typer.Option(
            None, "--review-threshold", min=0.0, max=1.0, help="A fixed review threshold instead."),
    ) -> None:
        """Train one fusion head per task on cached, frozen CLIP features; calibrate each on its dev split."""
        from crisis_tool.data.crisismmd import resolve_tasks
        from crisis_tool.models.heads import HeadConfig
        from crisis_tool.train import DEFAULT_CACHE, TrainOptions, train

        tasks = resolve_tasks(task)
        for path in labels:
            if not path.is_file():
                raise UsageError(f"--labels {path}: no such file")
        try:
            HeadConfig(num_classes=2, clip_embed_dim=1, head=head, modality=modality)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        if text != "tweet" and llava_file is None:
            typer.echo(f"note: --text {text} without --llava-file uses a LLaVA_text column if the TSVs have one",
                       err=True)
        opts = TrainOptions(head=head, modality=modality, text_source=text, optimizer=optimizer, lr=lr,
                            batch_size=batch_size, epochs=epochs, early_stop=early_stop, seed=seed,
                            skip_bad=skip_bad, splits=splits, review_precision=review_precision,
                            review_threshold=review_threshold)
        metrics = train(data, tasks, out, opts, clip_model, pretrained, llava_file, cache_dir or DEFAULT_CACHE,
                        log=lambda m: typer.echo(m, err=True), corrections=list(labels))
        for name, m in metrics["tasks"].items():
            for split in ("dev", "test"):
                if split in m and "ece" in m[split]:
                    r = m[split]
                    typer.echo(f"{name} {split}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}, "
                               f"weighted-F1 {r['weighted_f1']:.4f}, ECE {r['ece_uncalibrated']:.4f} -> "
                               f"{r['ece']:.4f} (T={r['temperature']:.3f})")
        typer.echo(f"run dir {out}; next: crisis-tool export --model {out} --out BUNDLE_DIR")

    @app.command("evaluate")
    def evaluate_cmd(
        model: Path = typer.Option(..., "--model", help="Run dir written by `crisis-tool train`."),
        data: Path = typer.Option(..., "--data", help="CrisisMMD_v2.0 folder."),
        split: str = typer.Option("test", help="train | dev | test."),
        llava_file: Path | None = typer.Option(None, help="LLaVA texts for llava text sources."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the metrics as JSON."),
        confusion_png: Path | None = typer.Option(None, "--confusion-png",
                                                  help="Confusion matrix PNG (default RUN_DIR/confusion_<split>.png)."),
        cache_dir: Path | None = typer.Option(None, help="Feature cache."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop rows with missing/unreadable images."),
        plot: bool = typer.Option(False, "--plot", help="Also draw a reliability diagram per head (RUN_DIR)."),
        baseline: Path | None = typer.Option(
            None, "--baseline", help="Another run dir (e.g. before `train --labels`): one line per head comparing "
                                     "it with --model on the same split."),
    ) -> None:
        """Every head: accuracy, macro/weighted F1, per-class P/R/F1, calibration (ECE, NLL) and review stats."""
        from crisis_tool.evaluate import evaluate_run
        from crisis_tool.train import DEFAULT_CACHE

        png = confusion_png or Path(model) / f"confusion_{split}.png"
        report = evaluate_run(model, data, split, llava_file, cache_dir or DEFAULT_CACHE, skip_bad, png,
                              log=lambda m: typer.echo(m, err=True), plot_dir=Path(model) if plot else None)
        for head_report in report["tasks"].values():
            _print_report(head_report)
            typer.echo(f"confusion matrix: {head_report.get('confusion_png')}")
            if "reliability_png" in head_report:
                typer.echo(f"reliability diagram: {head_report['reliability_png']}")
        if baseline is not None:
            old = evaluate_run(baseline, data, split, llava_file, cache_dir or DEFAULT_CACHE, skip_bad, None,
                               log=lambda m: typer.echo(m, err=True))
            report["baseline"] = {"model": str(baseline), "tasks": old["tasks"]}
            for task, new in report["tasks"].items():
                if task in old["tasks"]:
                    typer.echo(_comparison_line(task, split, old["tasks"][task], new))
        if json_out:
            atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
            typer.echo(f"metrics: {json_out}")


def _comparison_line(task: str, split: str, old: dict, new: dict) -> str:
    """'damage test: accuracy 0.61 -> 0.66 (+0.05), macro-F1 ...' for a head before and after."""
    parts = [f"{name} {old[key]:.4f} -> {new[key]:.4f} ({new[key] - old[key]:+.4f})"
             for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("ece", "ECE")) if key in old
             and key in new]
    return f"{task} {split}: " + ", ".join(parts)
