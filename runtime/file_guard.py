"""Reading untrusted files safely: regular files only, never blocking, never more than a stated size.

A record's image or a bundle's graph may name a FIFO, a device (`/dev/zero`), a socket or a symlink to one.
`open_regular` opens with O_NONBLOCK (so a FIFO cannot hang the open), checks with fstat on the opened
descriptor that it is a regular file (no race with a swapped path), then clears O_NONBLOCK. `read_capped`
refuses a file above `max_bytes` from its size, and stops reading at `max_bytes + 1` in case it grows.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from crisis_tool.runtime.errors import DataError

DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024


class UnsafeFileError(DataError):
    """A path that is not a readable regular file, or one larger than allowed; `reason` omits the path."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def file_kind(mode: int) -> str:
    """"a FIFO", "a character device", ... for a non-regular file's st_mode."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path) -> BinaryIO:
    """Open `path` for binary reading if (after following links) it is a regular file; else UnsafeFileError."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnsafeFileError(path, "no such file") from None
    except OSError as exc:
        raise UnsafeFileError(path, f"cannot open ({exc.strerror or exc})") from None
    except ValueError:  # e.g. an embedded NUL byte: no file can have that name
        raise UnsafeFileError(path, "not a valid file name") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFileError(path, f"{file_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def regular_file_size(path: str | Path) -> int:
    """Size in bytes of a regular file (UnsafeFileError for anything else), without reading it."""
    with open_regular(path) as fh:
        return os.fstat(fh.fileno()).st_size


def read_capped(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of regular file `path`, refused (UnsafeFileError) when it holds more than `max_bytes`."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise UnsafeFileError(path, f"{size} bytes, above the limit of {max_bytes} bytes")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFileError(path, f"more than the limit of {max_bytes} bytes")
    return data
