"""`crisis-tool predict` against clumsy and hostile use: outputs are never lost, errors are one line, Ctrl-C ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from crisis_tool.cli import run

TEXT = "Flooded houses near the river"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "ok.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(path)
    return path


def _jsonl(path: Path, image: Path, n: int = 3, bom: bool = False) -> Path:
    lines = [json.dumps({"id": f"r{i}", "text": TEXT, "image": str(image)}) for i in range(n)]
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "\n".join(lines).encode() + b"\n")
    return path


def _predict(bundle: Path, *args: str) -> int:
    return run(["predict", "--bundle", str(bundle), *args])


def test_output_that_is_the_input_is_a_usage_error(tiny_bundle: Path, image: Path, tmp_path: Path, capsys) -> None:
    data = _jsonl(tmp_path / "x.jsonl", image)
    before = data.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    for output in (str(data), str(tmp_path / "." / "x.jsonl"), str(link)):
        assert _predict(tiny_bundle, "--input", str(data), "--output", output) == 2
        err = capsys.readouterr().err
        assert "is the same file as the input" in err and len(err.strip().splitlines()) == 1
    assert data.read_bytes() == before
    assert _predict(tiny_bundle, "--input", str(data), "--output", str(image)) == 2  # an image is an input too
    assert "existing image" in capsys.readouterr().err
    assert _predict(tiny_bundle, "--input", str(data), "--output", str(tiny_bundle / "manifest.json")) == 2


def test_failed_run_leaves_an_existing_output_untouched(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("precious earlier results\n")
    bad_tsv = tmp_path / "split.tsv"
    bad_tsv.write_text("not\ta\tcrisismmd\theader\n1\t2\t3\t4\n")
    assert _predict(tiny_bundle, "--input", str(bad_tsv), "--image-root", str(tmp_path), "--output", str(out)) == 1
    assert "not a CrisisMMD split TSV" in capsys.readouterr().err
    assert out.read_text() == "precious earlier results\n"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []  # the temporary file is gone


def test_complete_run_replaces_the_output_atomically(tiny_bundle: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    assert _predict(tiny_bundle, "--input", str(_jsonl(tmp_path / "in.jsonl", image)), "--output", str(out)) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r0", "r1", "r2"]
    assert out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_full_device_is_one_line(tiny_bundle: Path, image: Path, tmp_path: Path, capsys) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    code = _predict(tiny_bundle, "--input", str(_jsonl(tmp_path / "in.jsonl", image)), "--output", "/dev/full")
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("warning: ", "backend auto: "))]
    assert code == 2 and lines == ["error: cannot write /dev/full: No space left on device"], err
    assert Path("/dev/full").is_char_device()  # written as a stream, never replaced by a file


def test_jsonl_with_a_bom_keeps_its_first_record(tiny_bundle: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    data = _jsonl(tmp_path / "bom.jsonl", image, bom=True)
    assert _predict(tiny_bundle, "--input", str(data), "--output", str(out)) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r0", "r1", "r2"]


def test_folder_reader_reports_special_entries(tiny_bundle: Path, image: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(image.read_bytes())
    (folder / "a.txt").write_text(TEXT)
    os.mkfifo(folder / "b_fifo.jpg")
    (folder / "c_zero.jpg").symlink_to("/dev/zero")
    (folder / "d_gone.jpg").symlink_to(folder / "nowhere.jpg")
    os.mkfifo(folder / "e_pipe")  # no image suffix: still not silently skipped
    (folder / "f.png").write_bytes(image.read_bytes())
    (folder / "f.txt").symlink_to("/dev/zero")  # its text is an endless device
    (folder / "notes.md").write_text("not an image, skipped")
    out = tmp_path / "out.jsonl"
    assert _predict(tiny_bundle, "--input", str(folder), "--output", str(out)) == 3
    rows = {row["id"]: row["error"] for row in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["a.png", "b_fifo.jpg", "c_zero.jpg", "d_gone.jpg", "e_pipe", "f.png"]
    assert rows["a.png"] is None
    assert rows["b_fifo.jpg"].endswith("a FIFO, not a regular file")
    assert rows["c_zero.jpg"].endswith("a character device, not a regular file")
    assert rows["d_gone.jpg"].endswith("a dangling symbolic link")
    assert rows["e_pipe"].endswith("a FIFO, not a regular file")
    assert "cannot read f.txt (field 'text'): a character device" in rows["f.png"]


def _start_predict(bundle: Path, output: str, tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from crisis_tool.cli import main; main()", "predict", "--bundle", str(bundle),
         "--input", "-", "--output", output, "--batch-size", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )


@pytest.mark.parametrize(("to_file", "stop"), [(True, signal.SIGINT), (False, signal.SIGINT), (True, signal.SIGTERM)],
                         ids=["file-ctrl-c", "stdout-ctrl-c", "file-sigterm"])
def test_ctrl_c_ends_with_one_line_and_keeps_a_valid_prefix(tiny_bundle: Path, image: Path, tmp_path: Path,
                                                            to_file: bool, stop: signal.Signals) -> None:
    """Ctrl-C, or SIGTERM (a service manager, `docker stop`), the same way."""
    out = tmp_path / "out.jsonl"
    if to_file:
        out.write_text("previous run\n")
    proc = _start_predict(tiny_bundle, str(out) if to_file else "-", tmp_path)
    assert proc.stdin is not None and proc.stdout is not None
    for i in range(4):  # two full batches, then the input stays open: predict waits for more
        proc.stdin.write(json.dumps({"id": f"r{i}", "text": TEXT, "image": str(image)}).encode() + b"\n")
    proc.stdin.flush()
    partial = tmp_path / "out.jsonl.partial"
    deadline = time.monotonic() + 120
    if to_file:
        while not any(p.name.endswith(".partial") and p.stat().st_size for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
    else:
        first = proc.stdout.readline()
        assert json.loads(first)["id"] == "r0"
    time.sleep(0.5)
    proc.send_signal(stop)
    proc.wait(timeout=30)  # a hang guard only: stdin stays open, so without the handler it never ends
    assert proc.stderr is not None
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 130
    lines = [line for line in stderr.decode().strip().splitlines()
             if not line.startswith(("warning: ", "backend auto: "))]  # (what auto chose is said first)
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr  # (the random-weights warning aside)
    if to_file:
        assert out.read_text() == "previous run\n"
        ids = [json.loads(line)["id"] for line in partial.read_text().splitlines()]
        assert ids == ["r0", "r1", "r2", "r3"] and str(partial) in lines[0]
    else:
        rows = (first + stdout).decode().splitlines()
        assert [json.loads(line)["id"] for line in rows] == ["r0", "r1", "r2", "r3"]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_ends_the_process_even_when_a_worker_is_busy(tmp_path: Path, stop: signal.Signals) -> None:
    """The interpreter waits for non-daemon worker threads at exit; the watcher ends it within its grace."""
    script = (
        "import threading, time\n"
        "from crisis_tool.runtime.interrupts import prompt_interrupt\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()  # a busy, non-daemon worker\n"
        "with prompt_interrupt(grace_s=0.5):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=30)  # < the worker's 60 s: the watcher ended it (latency: benchmarks/)
    assert proc.returncode == 130
    assert stderr.decode().strip().splitlines()[-1] == "error: interrupted"
