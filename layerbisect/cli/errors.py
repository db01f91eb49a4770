"""Turning user errors into one line and exit code 2, never a traceback."""

from __future__ import annotations

import sys

from ..errors import InputError

MAX_CHARS = 2000


def fail(err: InputError | str, code: int = 2) -> None:
    """One line on stderr, whatever the message holds (names from a hostile file can hold any character)."""
    msg = " ".join(str(err).splitlines())  # every line break str.splitlines knows (\x1c, \x85, \u2028 ...)
    if len(msg) > MAX_CHARS:
        msg = msg[: MAX_CHARS - 3] + "..."
    print(f"bisect: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def interrupted(signum: int) -> None:
    """Exit as the shell reports a signal (128 + N: 130 for SIGINT) after one line on stderr."""
    from ..outputs import COMMITTED

    done = ", ".join(str(p) for p in COMMITTED)
    print("bisect: interrupted; " + (f"already written in full: {done}; nothing else was changed" if done
                                     else "no output was changed"), file=sys.stderr)
    raise SystemExit(128 + int(signum))
