"""The wheel: built from this tree, installed in a fresh venv, it runs with its package data.

The venv reuses the system site-packages for the heavy dependencies (torch, plotly, ...) and
the wheel is installed with ``--no-deps``: what is tested is the wheel's own content (modules,
engine name maps, the ``bisect`` entry point), not PyPI. ``bisect demo`` from such a venv was
run by hand (README "Install"); it takes minutes, so it is not repeated here.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_in_a_fresh_venv_and_runs(tmp_path):
    pytest.importorskip("build", reason="install the [test] extra (build)")
    dist = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = dist.glob("layerbisect-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    py, exe = env_dir / "bin" / "python", env_dir / "bin" / "bisect"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]

    # run from elsewhere, so the source tree cannot stand in for the installed package
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("layerbisect "), r.stdout + r.stderr
    check = (
        "import layerbisect, pathlib; from layerbisect.engines.namemap import builtin_maps;"
        "p = pathlib.Path(layerbisect.__file__); assert 'site-packages' in str(p), p;"
        "assert len(builtin_maps()) >= 6;"
        "assert (p.parent / 'py.typed').exists();"
        "from layerbisect.reports import html, plots; print('ok')"
    )
    r = subprocess.run([str(py), "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-2000:]
