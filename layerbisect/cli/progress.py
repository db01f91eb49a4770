"""One progress display for every command: a bar while tensors load, a status line between steps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class Reporter:
    bar: Progress
    task: Any

    def progress(self, name: str, done: int, total: int) -> None:
        """Loader callback: one tick per tensor or module."""
        self.bar.update(self.task, description=f"loading {name}", completed=done, total=total)

    def status(self, msg: str) -> None:
        self.bar.update(self.task, description=msg, completed=0, total=None)


@contextmanager
def progress_display(console: Console, first: str = "starting") -> Iterator[Reporter]:
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:
        yield Reporter(bar, bar.add_task(first, total=None))
