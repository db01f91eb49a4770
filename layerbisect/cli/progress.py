"""One progress display for every command: a bar while tensors load, a status line between steps.

While it runs, everything third-party libraries print (transformers' and llmcompressor's
progress bars and INFO logs, tqdm, Python warnings) goes to a log file
(``layerbisect.quiet``); the display and the report are drawn on duplicates of the terminal's
descriptors, so they are the only thing on the screen. The log's path is printed at the end
when anything landed in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..quiet import output_to, run_log_path, terminal_file


def terminal(stderr: bool = False) -> Console:
    """A console on the terminal itself (fd 1 or 2 as they were before any redirection)."""
    return Console(file=terminal_file(2 if stderr else 1))


@dataclass
class Reporter:
    """Two rows of one display: the current step (a pulsing bar), and a loader's count while it runs."""

    bar: Progress
    step: Any
    load: Any
    log: Path | None = None

    def progress(self, name: str, done: int, total: int) -> None:
        """Loader callback: one tick per tensor or module."""
        self.bar.update(self.load, description=f"loading {name}", completed=done, total=total,
                        count=f"{done}/{total}", visible=done < total)  # fmt: skip

    def status(self, msg: str) -> None:
        self.bar.update(self.step, description=msg)
        self.bar.update(self.load, visible=False)


@contextmanager
def progress_display(console: Console, first: str = "starting", *, quiet_others: bool = True) -> Iterator[Reporter]:
    """The display; with ``quiet_others`` third-party output goes to a fresh log file meanwhile."""
    log = run_log_path() if quiet_others else None
    try:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(), console=console, transient=True,
            disable=not console.is_terminal,  # piped or captured: no display (it would leave an empty line behind)
            # rich would route sys.stdout/sys.stderr writes (tqdm's bars) above the display: they go to the log
            redirect_stdout=False, redirect_stderr=False,
        ) as bar:  # fmt: skip
            rep = Reporter(bar, bar.add_task(first, total=None, count=""), bar.add_task("", visible=False, count=""),
                           log)  # fmt: skip
            if log is None:
                yield rep
            else:
                with output_to(log):
                    yield rep
    finally:  # also after an error: its cause may be in the log
        if log is not None and log.exists():
            if log.stat().st_size > 0:
                console.print(f"[dim]third-party output (progress bars, warnings): {log}[/]", highlight=False,
                              soft_wrap=True)  # a path cut in two cannot be pasted
            else:
                log.unlink()
