"""The once-per-machine llama-cpp-python build: cache layout and the no-build path (no compiling here)."""

from __future__ import annotations

from layerbisect.producers import llamacpp_build as B


def test_wheel_dir_is_keyed_by_version_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERBISECT_CACHE", str(tmp_path))
    d = B.wheel_dir()
    assert d.parent == tmp_path / "wheels"
    assert d.name == f"llama-cpp-python-{B.LLAMA_CPP_PYTHON_VERSION}-{B.cpu_key()}"
    assert len(B.cpu_key()) == 12 and B.cpu_key() == B.cpu_key()


def test_no_build_without_a_cached_wheel_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERBISECT_CACHE", str(tmp_path))
    monkeypatch.setattr(B, "installed_version", lambda: None)
    msg = B.ensure_llama_cpp(build=False, log=lambda s: None)
    assert "no cached wheel" in msg and str(tmp_path) in msg
    assert not (tmp_path / "wheels").exists() or not any((tmp_path / "wheels").iterdir())
