"""Atomic output files: write to a temporary file in the same folder, rename into place when complete.

A reader never sees a half-written output, a run that fails before it finishes leaves an existing file
untouched, and an output that resolves to one of the run's inputs is refused before anything is opened.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.interrupts import on_forced_exit


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when `a` and `b` name the same file (after resolving links), or the same existing inode."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def refuse_overwriting_inputs(output: str | Path, inputs: Iterable[str | Path], flag: str = "--output") -> None:
    """UsageError when `output` resolves to any of `inputs` (an input is never overwritten)."""
    for item in inputs:
        if str(item) in ("", "-") or str(output) == "-":
            continue
        if same_file(output, item):
            raise UsageError(f"{flag} {output} is the same file as the input {item}; choose another output path")


def check_writable_dir(folder: str | Path, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove it is writable now (UsageError otherwise), before long work starts."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {path} is not writable ({exc.strerror or exc})") from None
    return path


def _new_file_mode(target: Path) -> int:
    """The permission bits `target` would get from a plain open(): its own if it exists, else 0o666 - umask."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _trim_to_last_line(path: Path) -> None:
    """Cut a text file after its last newline, so an interrupted write leaves whole lines only."""
    with open(path, "r+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(65536, pos)
            fh.seek(pos - step)
            block = fh.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                fh.truncate(pos - step + cut + 1)
                return
            pos -= step
        fh.truncate(0)


@contextlib.contextmanager
def atomic_output(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", keep_partial: str | Path | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only if the block completes.

    On any exception the temporary file is removed and `path` is untouched; on KeyboardInterrupt with
    `keep_partial`, what was written so far is kept under that name instead (also if `prompt_interrupt` has to
    end the process). A link is followed (the file it names is replaced); an existing path that is not a
    regular file (a device, a FIFO, a folder) is refused: write such targets as streams. ENOSPC and other write
    errors surface as UsageError with one line.
    """
    target = Path(path)
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_file():
        raise UsageError(f"cannot write {path}: it exists and is not a regular file")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    os.chmod(fd, _new_file_mode(target))
    binary = "b" in mode
    keep = Path(keep_partial) if keep_partial is not None else None

    def abandon(interrupted: bool) -> None:
        if interrupted and keep is not None and tmp.exists():
            os.replace(tmp, keep)
            if not binary:
                _trim_to_last_line(keep)
        else:
            tmp.unlink(missing_ok=True)

    unregister = on_forced_exit(lambda: abandon(True))
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            try:
                yield fh
            except KeyboardInterrupt:
                with contextlib.suppress(OSError, ValueError):
                    fh.flush()  # whole lines written before Ctrl-C, for keep_partial
                raise
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        abandon(False)
        if exc.filename is not None and Path(exc.filename) != tmp:
            raise  # another file failed inside the block (e.g. an input): not a write error of this output
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        abandon(True)
        raise
    except BaseException:
        abandon(False)
        raise
    finally:
        unregister()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_output(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_output(path, "w") as fh:
        fh.write(text)
    return Path(path)
