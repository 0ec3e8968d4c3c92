"""`crisis-tool make-demo-data`: a synthetic CrisisMMD-format folder."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("make-demo-data")
    def make_demo_data_cmd(
        out: Path = typer.Option(..., "--out", help="Folder to write (CrisisMMD_v2.0 layout)."),
        n_train: int = typer.Option(96, help="Rows per task in the train split."),
        n_dev: int = typer.Option(32, help="Rows per task in the dev split."),
        n_test: int = typer.Option(32, help="Rows per task in the test split."),
        seed: int = typer.Option(0, help="Random seed."),
    ) -> None:
        """Write synthetic tweets and images whose colour encodes the class (for demos and tests)."""
        from crisis_tool.data.synthetic import make_demo_data

        root = make_demo_data(out, n_train, n_dev, n_test, seed)
        typer.echo(f"wrote synthetic CrisisMMD data to {root} (with llava.jsonl)")
