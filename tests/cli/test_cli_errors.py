"""Bad input: one line on stderr naming the file and the problem, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest


def _bisect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layerbisect.cli.app", *args], capture_output=True, text=True, timeout=300
    )


def _assert_clean_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, f"exit {res.returncode}\n{res.stderr}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{res.stderr}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


@pytest.fixture()
def phi_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "phi.gguf"
    w = gguf.GGUFWriter(str(path), "phi2")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_not_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("this is not a model\n")
    _assert_clean_error(_bisect("run", str(p), "--tokens", "1,2"), str(p), "not a GGUF file")


def test_truncated_gguf(tiny_models, tmp_path):
    src = tiny_models["llama"]["gguf"].read_bytes()
    p = tmp_path / "truncated.gguf"
    p.write_bytes(src[: len(src) // 2])
    _assert_clean_error(_bisect("run", str(p), "--tokens", "1,2"), str(p), "truncated")


def test_truncated_header(tiny_models, tmp_path):
    p = tmp_path / "head.gguf"
    p.write_bytes(tiny_models["llama"]["gguf"].read_bytes()[:64])
    _assert_clean_error(_bisect("run", str(p), "--tokens", "1,2"), str(p))


def test_unsupported_architecture(phi_gguf):
    res = _bisect("run", str(phi_gguf), "--tokens", "1,2")
    _assert_clean_error(res, str(phi_gguf), "unsupported architecture 'phi2'", "gemma3", "llama", "qwen3")


def test_missing_file(tmp_path):
    _assert_clean_error(_bisect("run", str(tmp_path / "nope.gguf")), "nope.gguf", "no such file")


def test_bad_token_ids(tiny_models):
    _assert_clean_error(_bisect("run", str(tiny_models["llama"]["gguf"]), "--tokens", "1,x"), "token ids", "'x'")
    _assert_clean_error(_bisect("run", str(tiny_models["llama"]["gguf"]), "--tokens", "1,9999999"), "outside")


def test_run_tiny_prints_table(tiny_models):
    res = _bisect("run", str(tiny_models["qwen3"]["gguf"]), "--tokens", "2,10,11,12", "--generate", "3")
    assert res.returncode == 0, res.stderr
    assert "generated ids" in res.stdout and "residual stream per layer" in res.stdout


def test_help_lists_commands():
    res = _bisect("--help")
    assert res.returncode == 0
    for cmd in ("run", "compare"):
        assert cmd in res.stdout
