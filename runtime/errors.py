"""Errors a user can cause. The CLI turns them into one line on stderr and a non-zero exit code."""

from __future__ import annotations


class CrisisToolError(Exception):
    """A user-facing error: bad input, missing file, missing dependency. Never a bug of ours."""

    exit_code = 1


class UsageError(CrisisToolError):
    """Bad arguments or unusable inputs (exit 2)."""

    exit_code = 2


class MissingDependencyError(UsageError):
    """A backend or package the command needs is absent (exit 2), e.g. no GPU or no TensorRT."""


class DataError(CrisisToolError):
    """A data set, split file or record is malformed or incomplete."""


class BundleError(CrisisToolError):
    """A bundle is missing files, altered, or incompatible with this machine."""


def caused_by(exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    """True when `exc` or anything in its chain of causes and contexts is one of `kinds`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
