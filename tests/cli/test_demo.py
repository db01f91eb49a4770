"""`bisect demo`: the README's main job on the bundled Gemma 3 270M (slow: builds or reuses cached candidates)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_writes_reports_and_names_most_divergent_layer(gemma_gguf, tmp_path):
    pytest.importorskip("llmcompressor", reason="install the [produce] extra")
    out = tmp_path / "rep"
    res = subprocess.run(
        [sys.executable, "-m", "layerbisect.cli.app", "demo", "--out", str(out), "--generate", "4"],
        capture_output=True, text=True, timeout=3600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for scheme in ("fp8", "nvfp4"):
        for name in ("report.md", "report.html", "report.json"):
            assert (out / scheme / name).is_file(), f"{scheme}/{name} missing"
        data = json.loads((out / scheme / "report.json").read_text())
        assert dict(data["run"]["labels"])["scheme"].lower() == scheme
        assert f"{scheme.upper()}: most divergent layer:" in res.stdout, res.stdout[-2000:]
