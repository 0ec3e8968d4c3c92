"""`crisis-tool review` arguments: user mistakes are one line and a non-zero exit; the token is enforced."""

from __future__ import annotations

import json
import socket
import urllib.error
from pathlib import Path

import pytest
from review_testkit import DAMAGE_ONLY, ReviewProcess, get_json, make_queue

pytest.importorskip("uvicorn")


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_user_mistakes_are_one_line(cli, tiny_bundle: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    queue = make_queue(tmp_path / "q", DAMAGE_ONLY, count=3)
    base = ["review", "--bundle", tiny_bundle]
    assert cli([*base, "--queue", tmp_path / "none.jsonl", "--labels", tmp_path / "c.jsonl"]) == 2
    assert "--queue" in _one_line_error(capsys)
    assert cli([*base, "--queue", queue, "--labels", queue]) == 2
    assert "same file as the input" in _one_line_error(capsys)
    assert cli([*base, "--queue", queue, "--labels", tmp_path / "no" / "c.jsonl"]) == 2
    assert "--labels folder does not exist" in _one_line_error(capsys)
    assert cli(["review", "--bundle", tmp_path, "--queue", queue, "--labels", tmp_path / "c.jsonl"]) == 2
    assert "is not a bundle" in _one_line_error(capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(queue.read_text() + json.dumps({"id": "x", "tasks": {"informative": {}}}) + "\n")
    assert cli([*base, "--queue", bad, "--labels", tmp_path / "c.jsonl"]) == 1
    assert "bad.jsonl line 4: field 'tasks.informative' is not a head of the bundle" in _one_line_error(capsys)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n{}\n")
    assert cli([*base, "--queue", queue, "--labels", broken]) == 1
    assert "broken.jsonl line 1: not a JSON line" in _one_line_error(capsys)
    assert broken.read_text() == "{not json\n{}\n"  # never rewritten
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli([*base, "--queue", queue, "--labels", tmp_path / "c.jsonl", "--port", port]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in _one_line_error(capsys)


def test_the_command_enforces_its_token(tiny_bundle: Path, tmp_path: Path) -> None:
    queue = make_queue(tmp_path / "q", DAMAGE_ONLY, count=3)
    server = ReviewProcess([str(a) for a in ("--queue", queue, "--bundle", tiny_bundle, "--labels",
                                             tmp_path / "c.jsonl", "--token", "s3cret")])
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            get_json(f"{server.url}/api/state")
        assert info.value.code == 401
        state = get_json(f"{server.url}/api/state", {"Authorization": "Bearer s3cret"})
        assert state["progress"]["total"] == 3
    finally:
        server.kill()
