"""CLI conventions: help without `<bool>`, `--version`, deprecated aliases, each warning once per run, and a plain
progress line at a steady rate outside a terminal."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import typer

from crisis_tool import cli
from crisis_tool.commands.aliases import deprecated_alias
from crisis_tool.progress import count_line, progress_bar, status_line
from crisis_tool.run_messages import once_per_run
from crisis_tool.runtime.errors import UsageError


def _command_names() -> list[str]:
    group = typer.main.get_command(cli.app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_every_command_is_checked() -> None:
    names = _command_names()
    assert {"bench", "export", "predict", "env", "check-data", "train"} <= set(names) and len(names) >= 12


@pytest.mark.parametrize("command", [None, *_command_names()])
def test_help_has_no_bool_metavar(command: str | None, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    assert cli.run([command, "--help"] if command else ["--help"]) == 0
    out = capsys.readouterr().out
    assert "--help" in out and "Usage" in out
    assert "<bool>" not in out and "BOOLEAN" not in out


def test_flags_still_show_their_negative_form(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    assert cli.run(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"--peak\s+--no-peak", out) and "--wide" in out and "--input" in out
    assert "--no-gemm" not in out and "--component" not in out and "--records" not in out  # hidden, deprecated


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    assert cli.run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"crisis-tool {metadata.version('crisis-tool')}"


def test_deprecated_alias() -> None:
    with pytest.warns(FutureWarning, match=r"^--records is deprecated .* use --input$"):
        assert deprecated_alias(None, "a.jsonl", "--records", "--input") == "a.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert deprecated_alias("b.jsonl", None, "--records", "--input") == "b.jsonl"  # no warning
        assert deprecated_alias("e2e", None, "--component", "--workload", unset="e2e") == "e2e"
    with pytest.raises(UsageError, match="give --input .* not both"):
        deprecated_alias("b.jsonl", "a.jsonl", "--records", "--input")


def test_each_warning_once_per_run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.root, "handlers", [])  # as in a real run: no handler but the CLI's
    log = logging.getLogger("crisis_tool.test_once")
    with once_per_run():
        for _ in range(3):
            log.warning("some records have no llava_text")
            warnings.warn("the bundle was exported by a newer crisis-tool", UserWarning, stacklevel=1)
        with once_per_run():  # a run inside the run (`crisis-tool demo`) shares its memory
            log.warning("some records have no llava_text")
        log.warning("another message")
    err = capsys.readouterr().err.splitlines()
    assert err.count("warning: some records have no llava_text") == 1
    assert err.count("warning: the bundle was exported by a newer crisis-tool") == 1
    assert err.count("warning: another message") == 1
    with once_per_run():  # the next run says it again
        log.warning("some records have no llava_text")
    assert capsys.readouterr().err.splitlines().count("warning: some records have no llava_text") == 1


def test_plain_progress_lines_at_a_steady_rate(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("CRISIS_TOOL_PROGRESS_SECONDS", "0.05")
    with progress_bar("encoding images", total=10) as advance:
        for _ in range(10):
            time.sleep(0.03)
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3
    assert all(re.fullmatch(r"encoding images: \d+/10 \(\d+%\), \d+\.\d/s(, ETA \d+s)?", line) for line in lines)
    with status_line("bench") as update:
        update("round 1")
        time.sleep(0.2)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(re.fullmatch(r"bench: round 1 \(\ds elapsed\)", line) for line in lines)


def test_quiet_when_the_work_is_short(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar("encoding texts", total=3) as advance:
        advance(3)
    assert capsys.readouterr().err == ""


def test_count_line() -> None:
    assert count_line("encoding images", 120, 500, 15.0) == "encoding images: 120/500 (24%), 8.0/s, ETA 48s"
    assert count_line("x", 500, 500, 100.0) == "x: 500/500 (100%), 5.0/s"
    assert count_line("x", 0, 10, 5.0) == "x: 0/10 (0%), 0.0/s"


def test_bench_output_problems_found_before_the_work(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "bundle"  # only its manifest's presence is checked before the outputs
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    assert cli.run(["bench", "--bundle", str(bundle), "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --json {tmp_path} is a folder; give a file name"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.run(["bench", "--bundle", str(bundle), "--markdown", str(blocker / "b.md")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --markdown folder {blocker} is not writable")
