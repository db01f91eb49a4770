"""The `bisect` command line. ``main`` is the console-script entry: it installs the signal handlers
(``signals.py``) before anything heavy is imported, then runs ``app.main``."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from .signals import install

    install()
    from .app import main as app_main

    app_main(argv)
