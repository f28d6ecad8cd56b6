"""User errors: one clear line (what, the value seen, the fix), exit code 2, no traceback."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2
EXIT_OS_ERROR = 74  # sysexits' EX_IOERR: a write failed (disk full, read-only, permissions)

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """A mistake in the user's input (override, file, checkpoint, prompt), not a bug in our code."""

    exit_code = EXIT_USER_ERROR


class WriteFailed(UserError):
    """A write the OS refused (disk full, read-only, permissions), with a fix for where it happened."""

    exit_code = EXIT_OS_ERROR


def exit_on_user_error(main: F) -> F:
    """Wrap an entry point: a UserError prints `error: <message>` to stderr and exits 2; a failed write
    (OSError) prints one line naming the path and exits EXIT_OS_ERROR.

    Bugs keep their traceback. Hydra wraps the task function and prints its own traceback, so entry points
    apply this inside the Hydra task (and Hydra's own config errors are handled in `cli.py`).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        except OSError as err:
            print(f"error: {os_error_line(err)}", file=sys.stderr)
            sys.exit(EXIT_OS_ERROR)

    return wrapper  # type: ignore[return-value]


# What to do about an OS error on a write, by errno; the default fits the rest.
_WRITE_FIXES = {
    errno.ENOSPC: "free space on that disk, or write elsewhere (paths.log_dir=<dir>, paths.cache_dir=<dir>)",
    errno.EDQUOT: "free space within your quota, or write elsewhere (paths.log_dir=<dir>)",
    errno.EROFS: "that file system is read-only: write elsewhere (paths.log_dir=<dir>, paths.cache_dir=<dir>)",
    errno.EACCES: "make it writable for this user, or write elsewhere (paths.log_dir=<dir>)",
    errno.EPERM: "make it writable for this user, or write elsewhere (paths.log_dir=<dir>)",
    errno.ENOTDIR: "a part of that path is a file, not a directory: move the file, or write elsewhere",
    errno.EEXIST: "a file stands where a directory must go: move it, or write elsewhere",
    errno.EISDIR: "a directory stands where a file must go: move it, or write elsewhere",
}


def os_error_line(err: OSError, action: str = "write", fix: str | None = None) -> str:
    """One line for a failed file operation: the path, what the OS said, and what to do about it."""
    path = err.filename if err.filename is not None else "a file"
    reason = err.strerror or str(err)
    name = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    fix = fix or _WRITE_FIXES.get(err.errno, "check that path, its disk and its permissions")
    return f"cannot {action} {path}: {reason}{f' ({name})' if name else ''}; {fix}"
