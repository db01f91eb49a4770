"""Render the HTML report in real headless Chromium: screenshot it and check the DOM has the plots."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from layerbisect.comparison.comparator import compare_captures
from layerbisect.comparison.report import Report
from layerbisect.comparison.synthetic import plant_growing_scale, synthetic_pair

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )


def test_html_renders_in_chromium(tmp_path):
    ref, cand, info = synthetic_pair(n_layers=6)
    plant_growing_scale(cand, 3, 2.0, final_softcap=info.final_softcap)
    paths = Report(compare_captures(ref, cand, info)).save(tmp_path / "out", formats=("html",))
    url = paths["html"].resolve().as_uri()

    shot = tmp_path / "shot.png"
    r = _run([f"--screenshot={shot}", "--window-size=1400,3000", url], tmp_path / "p1")
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    r = _run(["--dump-dom", url], tmp_path / "p2")
    dom = r.stdout
    assert r.returncode == 0, r.stderr[-2000:]
    for pid in ("plot-cosine", "plot-norm-ratio", "plot-rel-l2", "plot-saturation", "heatmap-residual-cosine"):
        assert f'<svg id="{pid}"' in dom, pid
    assert "<title>Norm ratio" in dom and "<polyline" in dom and 'class="finding' in dom
