"""Turning user errors into one line and exit code 2, never a traceback."""

from __future__ import annotations

import sys

from ..errors import InputError


def fail(err: InputError | str) -> None:
    msg = str(err)
    print(f"bisect: error: {msg}", file=sys.stderr)
    raise SystemExit(2)
