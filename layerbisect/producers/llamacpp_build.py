"""llama-cpp-python 0.3.36 compiled from its source distribution, once per machine.

``python -m layerbisect.producers.llamacpp_build`` (what ``scripts/ensure_llamacpp.sh`` and
``make test`` run) makes sure ``import llama_cpp`` gives the pinned version:

1. already installed at the pinned version and importable → nothing to do;
2. else a wheel in ``$LAYERBISECT_CACHE/wheels/llama-cpp-python-0.3.36-<cpu12>/`` → pip install it;
3. else build that wheel first: ``pip wheel --no-deps`` of the sha256-checked sdist
   (``producers.llamacpp.sdist_path``), CPU only, CMake with ``CMAKE_BUILD_PARALLEL_LEVEL`` =
   the core count, then install. ``build.json`` beside the wheel records the build time.

Why the CPU key (a hash of the CPU model and flags): ggml builds with ``GGML_NATIVE=ON`` by
default (``-march=native``), so a wheel is only safe on the machine type that built it; a
cache shared between different CPUs gets one wheel per type instead of an illegal instruction.

Measured first build: 874 s of CPU (814 user + 61 system), 50 min wall on a 2-core VM shared
with four other jobs; about 7–8 minutes when the two cores are free. Installing the cached
wheel takes seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from layerbisect.errors import InputError
from layerbisect.producers.cache import build_atomic, cache_dir
from layerbisect.producers.llamacpp import LLAMA_CPP_PYTHON_VERSION, sdist_path


def cpu_key() -> str:
    """12 hex digits naming the CPU type (model name and instruction-set flags)."""
    info = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        fields = {}
        for line in text.splitlines():
            k, _, v = line.partition(":")
            fields.setdefault(k.strip(), v.strip())
        info = fields.get("model name", "") + "|" + fields.get("flags", fields.get("Features", ""))
    except OSError:
        pass
    info += "|" + platform.machine() + "|" + platform.python_version()
    return hashlib.sha256(info.encode()).hexdigest()[:12]


def wheel_dir() -> Path:
    return cache_dir() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}-{cpu_key()}"


def installed_version() -> str | None:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def _importable() -> bool:
    r = subprocess.run([sys.executable, "-c", "import llama_cpp"], capture_output=True)
    return r.returncode == 0


def build_wheel(*, log=print) -> Path:
    """The cached wheel, building it first when absent (minutes: see the module notes)."""

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        sdist = sdist_path()
        env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp), str(sdist)]
        log(f"building llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} from source (CPU, CMake); "
            f"takes minutes, once per machine: {' '.join(cmd)}")
        t0, c0 = time.perf_counter(), os.times()
        with open(tmp / "build.log", "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        c1 = os.times()
        if r.returncode != 0:
            tail = " | ".join((tmp / "build.log").read_text(errors="replace").strip().splitlines()[-5:])
            raise InputError(sdist, f"pip wheel failed (exit {r.returncode}): {tail}")
        info = {"version": LLAMA_CPP_PYTHON_VERSION, "cpu_key": cpu_key(), "wall_s": round(time.perf_counter() - t0),
                "cpu_s": round(c1.children_user + c1.children_system - c0.children_user - c0.children_system),
                "cores": os.cpu_count(), "python": platform.python_version()}
        (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        log(f"built in {info['wall_s']} s wall, {info['cpu_s']} s CPU")

    d = build_atomic(wheel_dir(), build)
    wheels = sorted(d.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise InputError(d, "holds no llama_cpp_python wheel; delete the folder to rebuild")
    return wheels[-1]


def ensure_llama_cpp(*, build: bool = True, log=print) -> str:
    """Make ``import llama_cpp`` work at the pinned version; returns what was done."""
    if installed_version() == LLAMA_CPP_PYTHON_VERSION and _importable():
        return f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} already installed"
    d = wheel_dir()
    have = sorted(d.glob("llama_cpp_python-*.whl")) if d.is_dir() else []
    if not have and not build:
        return f"llama-cpp-python not installed and no cached wheel in {d}"
    wheel = have[-1] if have else build_wheel(log=log)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True)
    if r.returncode != 0 or not _importable():
        raise InputError(wheel, f"pip install failed: {(r.stdout + r.stderr).strip()[-300:]}")
    return f"installed {wheel.name} from {d}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-build", action="store_true", help="install a cached wheel only; never compile")
    args = p.parse_args(argv)
    try:
        print(ensure_llama_cpp(build=not args.no_build))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
