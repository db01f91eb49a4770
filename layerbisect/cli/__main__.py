"""``python -m layerbisect.cli``: the same entry as the ``bisect`` console script."""

from __future__ import annotations

from . import main

main()
