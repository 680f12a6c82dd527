"""The one error type for bad input, and the CLI wrapper that turns it into a clear message + exit 2."""

from __future__ import annotations

import logging
import sys
from typing import Callable


class InputError(Exception):
    """Bad input: names the file, what was expected, what was found and what to do."""

    def __init__(self, path, expected: str, found: str, fix: str = ""):
        self.path, self.expected, self.found, self.fix = str(path), expected, found, fix
        msg = f"{self.path}: expected {expected}; found {found}."
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a stage's ``main``; an :class:`InputError` prints one clear line and exits with status 2."""
    try:
        main(argv)
    except InputError as err:
        logging.getLogger("recrl").debug("input error", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
