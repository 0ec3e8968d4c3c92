"""Lines of an input file or stream, each at most `MAX_LINE_BYTES`, read without holding a longer one.

`for line in fh` holds a whole line in memory however long it is: a file with no newline (a binary dump
named `.jsonl`, a truncated download) of a few GB takes the process down before its first record. Here a
longer line is read past in bounded pieces and stands as `TOO_LONG`, which the readers turn into that line's
error record, so the records after it are still read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO, Final

MAX_LINE_BYTES = 64 * 1024 * 1024  # one record's line: an inline base64 photo is a few MB
_PIECE = 1 << 20


class LineTooLong:
    """Stands for a line over the limit (its bytes were not kept)."""

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = LineTooLong()


def bounded_lines(fh: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | LineTooLong]:
    """The lines of `fh` (with their newline); TOO_LONG for one over `limit` bytes before its newline."""
    while line := fh.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := fh.readline(_PIECE)) and not rest.endswith(b"\n"):
            pass
        yield TOO_LONG


def fd_lines(fd: int, limit: int = MAX_LINE_BYTES, chunk: int = 1 << 16) -> Iterator[bytes | LineTooLong]:
    """Lines of file descriptor `fd` as they arrive, read with os.read; TOO_LONG for one over `limit`.

    Not through `sys.stdin.buffer`: a reader thread blocked in its readline holds the buffer's lock, and Python
    aborts at exit ("could not acquire lock for <stdin>") when Ctrl-C ends a run whose stdin is still open.
    """
    parts: list[bytes] = []
    size, skipping = 0, False
    while block := os.read(fd, chunk):
        start = 0
        while (end := block.find(b"\n", start)) != -1:
            piece = block[start:end + 1]
            if skipping or size + len(piece) > limit + 1:
                yield TOO_LONG
            else:
                yield b"".join([*parts, piece])
            parts, size, skipping, start = [], 0, False, end + 1
        tail = block[start:]
        if tail and not skipping:
            size += len(tail)
            if size > limit:
                parts, skipping = [], True
            else:
                parts.append(tail)
    if skipping:
        yield TOO_LONG
    elif parts:
        yield b"".join(parts)
