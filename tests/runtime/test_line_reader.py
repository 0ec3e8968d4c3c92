"""Lines over the limit are read past, never held: `line_reader` against a plain reference at any chunking,
and the readers in a process whose address space could not hold the long line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crisis_tool.runtime.line_reader import TOO_LONG, bounded_lines, fd_lines

LIMIT = 10
DATA = (b"short\n" + b"x" * 10 + b"\n" + b"y" * 11 + b"\n\n" + b"z" * 25 + b"\n" + b"w" * 9 + b"\n"
        + b"q" * 40)  # the last line: over the limit, with no newline


def reference(data: bytes, limit: int) -> list[object]:
    return [line if len(line.rstrip(b"\n")) <= limit else TOO_LONG for line in data.splitlines(keepends=True)]


def test_bounded_lines_equals_the_reference() -> None:
    want = reference(DATA, LIMIT)
    assert want.count(TOO_LONG) == 3
    assert list(bounded_lines(io.BytesIO(DATA), LIMIT)) == want
    assert list(bounded_lines(io.BytesIO(DATA), 1000)) == DATA.splitlines(keepends=True)


@pytest.mark.parametrize("chunk", [1, 3, 7, 11, 64])
def test_fd_lines_equals_the_reference_at_any_chunking(chunk: int) -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, DATA)
    os.close(write_fd)
    try:
        assert list(fd_lines(read_fd, LIMIT, chunk)) == reference(DATA, LIMIT)
    finally:
        os.close(read_fd)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RLIMIT_AS as Linux applies it")
@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_a_line_of_400_mb_is_one_error_record_in_bounded_memory(tmp_path: Path, suffix: str) -> None:
    """The reader runs with 200 MB of address space above its start: holding the 400 MB line would fail."""
    path = tmp_path / f"in{suffix}"
    with open(path, "wb") as fh:
        if suffix == ".tsv":
            fh.write(b"tweet_id\timage_id\ttweet_text\timage\n1\ta\tfirst\ta.jpg\n")
        else:
            fh.write(b'{"id": "a", "text": "first", "image": "a.jpg"}\n')
        for _ in range(400):
            fh.write(b"x" * (1 << 20))
        fh.write(b"\n")
        fh.write(b"2\tc\tlast\tc.jpg\n" if suffix == ".tsv" else b'{"id": "c", "text": "last", "image": "c.jpg"}\n')
    code = textwrap.dedent(f"""
        import resource
        from crisis_tool.runtime.records import read_records
        with open("/proc/self/status") as fh:
            size = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (size + (200 << 20), size + (200 << 20)))
        for item in read_records({str(path)!r}, image_root={str(tmp_path)!r}):
            print(type(item).__name__, item.id, getattr(item, "error", ""))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Record a") and lines[2].startswith("Record c"), lines
    long_line = 3 if suffix == ".tsv" else 2  # a TSV's line 1 is its header
    assert lines[1].startswith("RecordError None ")
    assert f"line {long_line} is over 67108864 bytes; not read" in lines[1]
