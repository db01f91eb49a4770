"""SIGINT/SIGTERM as ``Interrupted``: installed first thing, before torch is imported.

``Interrupted`` derives from ``BaseException`` so no ``except Exception`` in a library swallows it
and typer/click do not turn it into their own exit; ``cli.app.main`` catches it, prints one line and
exits 128 + N (130 for SIGINT, as a shell reports it). Staged outputs are removed on the way out
(``outputs.py``). The console script enters through ``layerbisect.cli.main`` (this module's
``install`` runs before the heavy imports), so a Ctrl-C while torch loads is no traceback either.
"""

from __future__ import annotations

import signal
import threading


class Interrupted(BaseException):
    """A terminating signal, raised in the main thread."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM to ``Interrupted`` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _raise_interrupted)
        signal.signal(signal.SIGTERM, _raise_interrupted)
