"""The `crisis-tool` command line: thin Typer commands that parse, call and print.

Each command lives in `crisis_tool.commands.<module>` and registers itself; heavy imports
(torch, open_clip, onnx) happen inside the command bodies so that `predict` and `bench` work
with the lean install.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

import typer
from typer.core import TyperOption

from crisis_tool.run_messages import once_per_run
from crisis_tool.runtime.errors import CrisisToolError, caused_by
from crisis_tool.runtime.interrupts import EXIT_INTERRUPTED, report_interrupt

COMMAND_MODULES = (
    "data_cmds",
    "train_cmds",
    "export_cmds",
    "sign_cmds",
    "predict_cmd",
    "bench_cmd",
    "caption_cmd",
    "reproduce_cmd",
    "demo_cmd",
    "serve_cmds",
    "review_cmd",
    "env_cmd",
    "check_data_cmd",
)

app = typer.Typer(
    name="crisis-tool",
    help="Train, export (ONNX/TensorRT), run and benchmark the multimodal crisis-tweet classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_typer_display_type = TyperOption.display_type_rich


def _flag_without_metavar(self: TyperOption, ctx):  # noqa: ANN001, ANN202 - Typer's own signature
    """A flag takes no value: help shows `--wide` or `--peak/--no-peak`, never `--wide <bool>`."""
    return None if self.is_flag else _typer_display_type(self, ctx)


TyperOption.display_type_rich = _flag_without_metavar  # type: ignore[method-assign]


def version() -> str:
    """The installed crisis-tool version."""
    try:
        return metadata.version("crisis-tool")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"crisis-tool {version()}")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="Print the version and exit."),
) -> None:
    """Train, export (ONNX/TensorRT), run and benchmark the multimodal crisis-tweet classifier.

    New machine? `crisis-tool env` says what it can run and what to install.
    """


for _name in COMMAND_MODULES:
    importlib.import_module(f"crisis_tool.commands.{_name}").register(app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return its exit code (tests use this).

    User errors (`CrisisToolError`) become one line on stderr and their exit code, never a traceback;
    warnings and log records become one `warning: ...` line each, each distinct one once per run.
    """
    with once_per_run():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        app(args=argv, prog_name="crisis-tool")
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED and _caused_by_interrupt(exc):  # Typer turns Ctrl-C into a silent 130
            report_interrupt()
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CrisisToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        report_interrupt()
        return EXIT_INTERRUPTED
    return 0


def _caused_by_interrupt(exc: BaseException) -> bool:
    """True when a KeyboardInterrupt is among the causes/contexts of `exc`."""
    return caused_by(exc, KeyboardInterrupt)


def main() -> None:
    """Console entry point."""
    raise SystemExit(run())


if __name__ == "__main__":
    main()
