"""One `PredictorOptions`, declared once: predict, serve and label read their defaults from it and load through
it, so a new Predictor option is one field, not three."""

from __future__ import annotations

import typer.main

from crisis_tool.runtime.predictor_options import PredictorOptions


def _default(command: str, param: str) -> object:
    from crisis_tool.cli import app

    click_app = typer.main.get_command(app)
    cmd = click_app.get_command(None, command)  # type: ignore[attr-defined]
    return next(p.default for p in cmd.params if p.name == param)


def test_serve_and_label_share_the_class() -> None:
    from crisis_tool.runtime.serve import options

    assert options.PredictorOptions is PredictorOptions


def test_commands_read_their_defaults_from_it() -> None:
    defaults = PredictorOptions()
    for command in ("predict", "serve", "label"):
        assert _default(command, "backend") == defaults.backend == "auto", command
        assert _default(command, "decode") == defaults.decode, command
        assert _default(command, "max_image_bytes") == defaults.max_image_bytes, command
