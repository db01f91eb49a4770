"""Bad candidate checkpoints: one line naming the file/layer and the problem, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def _run(cand: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layerbisect.cli.app", "run", str(cand), "--tokens", "2,10,11", "-n", "0"],
        capture_output=True, text=True,
    )


def _one_line_exit2(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, f"exit {res.returncode}: {res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(d: Path, fn) -> None:
    for f in d.glob("*.safetensors"):
        t = load_file(f)
        fn(t)
        save_file(t, f, metadata={"format": "pt"})


def test_missing_scale_tensor(tiny_quantized, tmp_path):
    _, cand = tiny_quantized("gemma3", "FP8")
    d = _copy(cand, tmp_path / "c")
    _edit_tensors(d, lambda t: t.pop(next(k for k in t if k.endswith("layers.0.self_attn.q_proj.weight_scale"))))
    _one_line_exit2(_run(d), "model.safetensors", "layers.0.self_attn.q_proj", "weight_scale", "missing")


def test_wrong_packed_shape(tiny_quantized, tmp_path):
    _, cand = tiny_quantized("gemma3", "NVFP4")
    d = _copy(cand, tmp_path / "c")

    def cut(t):
        k = next(k for k in t if k.endswith("layers.1.mlp.up_proj.weight_packed"))
        t[k] = t[k][:, : t[k].shape[1] // 2].contiguous()

    _edit_tensors(d, cut)
    _one_line_exit2(_run(d), "model.safetensors", "layers.1.mlp.up_proj", "weight_packed", "shape")


def test_unknown_format(tiny_quantized, tmp_path):
    _, cand = tiny_quantized("gemma3", "FP8")
    d = _copy(cand, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["format"] = "marlin-24-magic"
    (d / "config.json").write_text(json.dumps(cfg))
    _one_line_exit2(_run(d), "marlin-24-magic")


def test_corrupt_safetensors_header(tiny_quantized, tmp_path):
    _, cand = tiny_quantized("gemma3", "FP8")
    d = _copy(cand, tmp_path / "c")
    f = next(d.glob("*.safetensors"))
    data = bytearray(f.read_bytes())
    data[8:40] = b"\x00garbage-not-json-at-all-here!!\x00"
    f.write_bytes(bytes(data))
    _one_line_exit2(_run(d), f.name, "corrupt safetensors header")


def test_truncated_safetensors(tiny_quantized, tmp_path):
    _, cand = tiny_quantized("gemma3", "FP8")
    d = _copy(cand, tmp_path / "c")
    f = next(d.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _one_line_exit2(_run(d), f.name, "truncated")


def test_not_a_checkpoint(tmp_path):
    _one_line_exit2(_run(tmp_path), "no config.json")
