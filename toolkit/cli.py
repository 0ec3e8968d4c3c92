"""The `crisis-tool` command line: thin Typer commands that parse, call and print.

Each command lives in `crisis_tool.commands.<module>` and registers itself; heavy imports
(torch, open_clip, onnx) happen inside the command bodies so that `predict` and `bench` work
with the lean install.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings

import typer

from crisis_tool.runtime.errors import CrisisToolError
from crisis_tool.runtime.interrupts import EXIT_INTERRUPTED, report_interrupt

COMMAND_MODULES = (
    "data_cmds",
    "train_cmds",
    "export_cmds",
    "predict_cmd",
    "bench_cmd",
    "caption_cmd",
    "reproduce_cmd",
    "demo_cmd",
    "serve_cmds",
)

app = typer.Typer(
    name="crisis-tool",
    help="Train, export (ONNX/TensorRT), run and benchmark the multimodal crisis-tweet classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"crisis_tool.commands.{_name}").register(app)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"warning: {message}\n"


def run(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return its exit code (tests use this).

    User errors (`CrisisToolError`) become one line on stderr and their exit code, never a traceback;
    warnings and log records become one `warning: ...` line each.
    """
    warnings.formatwarning = _one_line_warning
    if not logging.root.handlers:
        logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
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
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main() -> None:
    """Console entry point."""
    raise SystemExit(run())


if __name__ == "__main__":
    main()
