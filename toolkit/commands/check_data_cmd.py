"""`crisis-tool check-data ROOT`: is a CrisisMMD v2.0 folder ready to train on? One line per problem."""

from __future__ import annotations

from pathlib import Path

import typer

from crisis_tool.runtime.errors import DataError, UsageError

SHOWN_PER_FILE = 20  # problems listed per split file unless --all


def register(app: typer.Typer) -> None:
    @app.command("check-data")
    def check_data(
        root: Path = typer.Argument(..., help="CrisisMMD_v2.0 folder: crisismmd_datasplit_<splits>/ and data_image/."),
        task: str | None = typer.Option(None, "--task", help="informative, humanitarian or damage (default: all)."),
        splits: str = typer.Option("settingA", "--splits", help="Split set: settingA, all or agreed_label."),
        show_all: bool = typer.Option(False, "--all", help=f"List every problem (default: the first "
                                      f"{SHOWN_PER_FILE} of each split file, then a count)."),
    ) -> None:
        """Check the layout, the split files, every row's label and image file, and count labels per split.

        Exit 1 when anything is wrong (each problem on its own line, naming the file, line and field).
        """
        from crisis_tool.data.check import check_root
        from crisis_tool.data.crisismmd import SPLIT_SETS, TASKS, resolve_task

        if splits not in SPLIT_SETS:
            raise UsageError(f"--splits {splits!r}: choose from {', '.join(SPLIT_SETS)}")
        if not root.is_dir():
            raise UsageError(f"{root}: not a folder")
        tasks = [resolve_task(task)] if task else list(TASKS.values())
        report = check_root(root, tasks, splits)
        for line in report.count_lines():
            typer.echo(line)
        for line in report.problem_lines(None if show_all else SHOWN_PER_FILE):
            typer.echo(line)
        if report.problems:
            raise DataError(f"{len(report.problems)} problem(s) in {root} (listed above)")
        first = tasks[0].name
        typer.echo(f"ok: {report.rows} rows, every image present. next: crisis-tool train --data {root} "
                   f"--task {first} --out runs/{first}")
