"""`crisis-tool label` as a user runs it (a subprocess, local Ray): Ctrl-C stops it within seconds, keeps the
answers written so far as resumable partials and leaves no Ray process behind; the rerun resumes, so every
record ends up with exactly one line and none is answered twice. Ray stays quiet and progress is counted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from serve_helpers import RAY_MISSING

pytest.importorskip("ray", reason=RAY_MISSING)

FILES, RECORDS = 3, 500


def make_inputs(root: Path) -> list[str]:
    from PIL import Image

    root.mkdir()
    for i in range(5):
        Image.new("RGB", (34 + i, 28), (50 * i, 90, 160)).save(root / f"img{i}.png")
    ids = []
    for f in range(FILES):
        lines = []
        for i in range(RECORDS):
            ids.append(f"f{f}r{i}")
            lines.append(json.dumps({"id": ids[-1], "text": f"road flooded {i}", "image": f"img{i % 5}.png"}))
        (root / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")
    return ids


def ray_processes(ray_tmp: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and ray_tmp in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def answered(out: Path) -> int:
    """Answer lines in the resumable partials and the outputs; not in atomic temporaries (`.NAME.*.partial`:
    the partial's input note is written through one, and counting its line sent Ctrl-C before any answer)."""
    lines = 0
    for path in [*out.glob("*.partial"), *out.glob("*.predictions.jsonl")]:
        if path.name.startswith("."):
            continue
        try:
            lines += len(path.read_bytes().splitlines())
        except FileNotFoundError:
            pass
    return lines


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_keeps_a_resumable_partial_and_the_rerun_completes_it(tiny_bundle: Path, tmp_path: Path,
                                                                     stop: signal.Signals) -> None:
    """Ctrl-C, or SIGTERM (a service manager, `docker stop`, `kill`), stops it the same way."""
    ids = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="ctl-", dir="/tmp")  # this run's Ray only: its sessions live here
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "CRISIS_TOOL_PROGRESS_SECONDS": "1"}
    command = [sys.executable, "-m", "crisis_tool.cli", "label", "--bundle", str(tiny_bundle), "--input",
               str(tmp_path / "in"), "--output", str(out), "--batch-size", "8", "--threads", "1"]
    try:
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while answered(out) == 0:
                assert run.poll() is None and time.monotonic() < deadline, "label ended before Ctrl-C"
                time.sleep(0.05)
            run.send_signal(stop)
            _, stderr = run.communicate(timeout=30)  # stops within seconds (its grace is 5 s) or the test fails
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 130, stderr
        assert "run the same command again to resume" in stderr and "Traceback" not in stderr, stderr
        kept = answered(out)
        assert 0 < kept < len(ids), kept
        assert not list(out.glob(".*.partial")), "an atomic temporary was left behind"
        time.sleep(2)
        assert ray_processes(ray_tmp) == []  # the local Ray stopped with it

        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        got = [json.loads(line)["id"] for f in range(FILES)
               for line in (out / f"part{f}.predictions.jsonl").read_text().splitlines()]
        assert got == ids  # every record exactly once, in input order
        assert f"{len(ids) - kept} records, 0 errors" in rerun.stderr  # what was answered is not answered again
        assert "resumed" in rerun.stderr and not list(out.glob("*.partial*"))
        for noise in ("core_worker", "logging.cc", "Token authentication", " INFO ", "Progress bars disabled"):
            assert noise not in rerun.stderr, (noise, rerun.stderr)
        assert "labelling records: " in stderr + rerun.stderr  # the plain progress line outside a terminal
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
