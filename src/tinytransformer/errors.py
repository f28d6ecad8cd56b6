"""User errors: one clear line (what, the value seen, the fix), exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """A mistake in the user's input (override, file, checkpoint, prompt), not a bug in our code."""


def exit_on_user_error(main: F) -> F:
    """Wrap an entry point: a UserError prints `error: <message>` to stderr and exits 2.

    Bugs keep their traceback. Hydra wraps the task function and prints its own traceback, so entry points
    apply this inside the Hydra task (and Hydra's own config errors are handled in `cli.py`).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
