"""Turning user errors into one line and exit code 2, never a traceback."""

from __future__ import annotations

import sys

from ..errors import InputError


def fail(err: InputError | str, code: int = 2) -> None:
    msg = " ".join(str(err).split("\n"))  # one line, whatever the message holds
    print(f"bisect: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def interrupted(signum: int) -> None:
    """Exit as the shell reports a signal (128 + N: 130 for SIGINT) after one line on stderr."""
    print("bisect: interrupted; no output was changed", file=sys.stderr)
    raise SystemExit(128 + int(signum))
