"""`crisis-tool reproduce`: the paper's ablation over tasks, configurations and seeds."""

from __future__ import annotations

from pathlib import Path

import typer

from crisis_tool.train_options import DEFAULT_CLIP_MODEL, DEFAULT_PRETRAINED
from crisis_tool.train_options import TRAIN_DEFAULTS as D


def register(app: typer.Typer) -> None:
    @app.command("reproduce")
    def reproduce_cmd(
        data: Path = typer.Option(..., "--data", help="CrisisMMD_v2.0 folder."),
        out: Path = typer.Option(Path("reproduce_out"), "--out", help="Folder for results.{json,md,png}."),
        tasks: str = typer.Option("informative,humanitarian,damage", help="Comma-separated tasks."),
        seeds: int = typer.Option(3, help="Seeds per configuration."),
        llava_file: Path | None = typer.Option(None, help="LLaVA texts (else a LLaVA_text TSV column)."),
        clip_model: str = typer.Option(DEFAULT_CLIP_MODEL, help="OpenCLIP architecture."),
        pretrained: str = typer.Option(DEFAULT_PRETRAINED, help="OpenCLIP tag, checkpoint path or none."),
        splits: str = typer.Option(D["splits"], help="settingA | all | agreed_label."),
        split: str = typer.Option("test", help="Split to report (dev when a task has no test split)."),
        optimizer: str = typer.Option(D["optimizer"], help="sgd (paper) | adamw."),
        lr: float = typer.Option(D["lr"], help="Learning rate."),
        epochs: int = typer.Option(D["epochs"], help="Maximum epochs per run."),
        early_stop: int = typer.Option(D["early_stop"], help="Early-stopping patience (epochs)."),
        cache_dir: Path | None = typer.Option(None, help="Feature cache."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop rows with missing/unreadable images."),
    ) -> None:
        """Train the ablation (image, text, guided, guided-diff, reference) and write the results table."""
        from crisis_tool.reproduce import run_reproduction
        from crisis_tool.train import DEFAULT_CACHE, TrainOptions

        opts = TrainOptions(optimizer=optimizer, lr=lr, epochs=epochs, early_stop=early_stop, splits=splits,
                            skip_bad=skip_bad)
        run_reproduction(data, [t.strip() for t in tasks.split(",") if t.strip()], seeds, out, opts,
                         clip_model, pretrained, llava_file, cache_dir or DEFAULT_CACHE, split,
                         log=lambda m: typer.echo(m, err=True))
        typer.echo(f"results: {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")
        typer.echo((out / "results.md").read_text(encoding="utf-8"))
