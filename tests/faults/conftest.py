"""One build root per session for the fault suite: tiny sources, clean producer candidates, broken copies."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fault_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from layerbisect.faults import tiny_sources

    root = tmp_path_factory.mktemp("faults")
    tiny_sources(root, ("gemma2", "llama"))
    return root
