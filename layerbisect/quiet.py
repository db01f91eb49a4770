"""Third-party output (progress bars, INFO logs, warnings) to a log file, away from our own display.

Design notes
- transformers, llmcompressor (loguru), datasets and tqdm print straight to the process's
  stdout/stderr ("Converting and de-quantizing GGUF tensors...", "Loading weights", "Writing
  model shards", calibration bars); Python warnings go to ``sys.stderr``. Silencing each
  library by its own switch is a moving target, so ``output_to`` redirects file descriptors
  1 and 2 themselves (``os.dup2``) for the duration: whatever anyone prints lands in the log.
- Our own display must survive that: the CLI builds its rich consoles on duplicates of the
  terminal's descriptors taken before any redirection (``terminal_file``), so the one
  progress display and the report keep going to the terminal.
- Nesting works (each level saves and restores the descriptors it found): the producers
  keep a ``producer.log`` beside each cached checkpoint while the CLI logs the whole run.
- ``TQDM_DISABLE=1`` while redirected keeps carriage-return progress bars out of the log.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

KEEP_LOGS = 20


@contextlib.contextmanager
def output_to(log: str | Path) -> Iterator[Path]:
    """Send everything written to fd 1 and 2 (and Python's ``sys.stdout``/``sys.stderr``) to ``log`` (appended)."""
    path = Path(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    old_tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if old_tqdm is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = old_tqdm


def terminal_file(fd: int) -> IO[str]:
    """A text stream on a duplicate of ``fd`` (1 or 2): still the terminal while ``output_to`` is active.

    When ``sys.stdout``/``sys.stderr`` is not that descriptor (a test runner captured it in memory)
    it is returned as it is: the capture then sees our output, and no redirection reaches it.
    """
    stream = sys.stdout if fd == 1 else sys.stderr
    try:
        if stream.fileno() != fd:
            return stream
    except (AttributeError, OSError, ValueError):
        return stream
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


def run_log_path() -> Path:
    """A fresh log file under ``<cache>/logs/`` (the oldest beyond the last ``KEEP_LOGS`` are removed)."""
    from layerbisect.producers.cache import cache_dir

    d = cache_dir() / "logs"
    d.mkdir(parents=True, exist_ok=True)
    old = sorted(d.glob("bisect-*.log"))
    for p in old[: max(0, len(old) - KEEP_LOGS + 1)]:
        with contextlib.suppress(OSError):
            p.unlink()
    return d / f"bisect-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


__all__ = ["output_to", "run_log_path", "terminal_file"]
