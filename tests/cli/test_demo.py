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
        md = (out / scheme / "report.md").read_text()
        assert len(md.encode()) <= 30_000, f"{scheme}/report.md is {len(md.encode())} bytes: not PR-sized"
        for section in ("## Findings", "## Per layer", "## Logits", "## Greedy continuations",
                        "## Local vs accumulated", "## Per-module local error", "## Weight audit"):  # fmt: skip
            assert section in md, section
    # one display: nothing third-party on the terminal (it goes to the log file)
    # (transformers' and tqdm's bars, llmcompressor's loguru lines "| INFO |", Python warnings)
    for noise in ("Converting and de-quantizing", "Loading weights", "Writing model shards", "%|", "it/s]",
                  "| INFO", "UserWarning", "FutureWarning"):  # fmt: skip
        assert noise not in res.stdout + res.stderr, noise
