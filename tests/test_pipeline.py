"""The main job end to end on tiny models quantized by the real producer (llmcompressor)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import layerbisect
from layerbisect.pipeline import CompareOptions

IDS = [2] + list(range(5, 29))


def _edit(src: Path, dst: Path, fn) -> Path:
    """Copy a checkpoint and edit its tensors with safetensors' own API."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        t = load_file(f)
        fn(t)
        save_file(t, f, metadata={"format": "pt"})
    return dst


def _key(tensors: dict, suffix: str) -> str:
    hits = [k for k in tensors if k.endswith(suffix)]
    assert len(hits) == 1, (suffix, hits[:5])
    return hits[0]


def test_fp8_candidate_is_close_and_reported(tiny_quantized, tmp_path):
    gguf, cand = tiny_quantized("gemma3", "FP8")
    report = layerbisect.compare(gguf, cand, options=CompareOptions(tokens=IDS, generate=4))
    df = report.df
    res = df[df["point"].str.endswith(".out")]
    assert res["cosine"].min() > 0.99, res.groupby("point")["cosine"].min()
    assert not any(f.kind in ("nonfinite_onset", "norm_blowup") for f in report.findings)
    assert report.record.continuations.reference.ids, "reference continuation missing"
    written = report.save(tmp_path / "rep")
    data = json.loads(Path(written["json"]).read_text())
    assert data["findings"], "JSON must carry the findings"
    sections = data["sections"]
    assert any(s["title"].startswith("Local vs accumulated") for s in sections)


def test_planted_nan_names_layer_and_op(tiny_quantized, tmp_path):
    gguf, cand = tiny_quantized("gemma3", "FP8")

    def plant(t):
        k = _key(t, "layers.1.mlp.down_proj.weight_scale")
        t[k] = torch.full_like(t[k], float("nan"))

    broken = _edit(cand, tmp_path / "nan", plant)
    report = layerbisect.compare(gguf, broken, options=CompareOptions(tokens=IDS, generate=0))
    onset = [f for f in report.findings if f.kind == "nonfinite_onset"]
    assert onset, [f.kind for f in report.findings]
    assert onset[0].layer == 1 and onset[0].op == "mlp.down", onset[0]
    top = report.findings[0]
    assert top.severity == "critical" and top.layer == 1, f"the top finding must name layer 1: {top}"


def test_softcap_saturation_fires(tiny_quantized, tmp_path):
    gguf, cand = tiny_quantized("gemma2", "FP8")

    def blow(t):  # the final norm's gain ×50: every logit is driven into the 30 cap
        k = _key(t, "model.norm.weight")
        t[k] = (t[k].float() * 50 + 49).to(t[k].dtype)

    broken = _edit(cand, tmp_path / "sat", blow)
    report = layerbisect.compare(gguf, broken, options=CompareOptions(tokens=IDS, generate=0))
    sat = [f for f in report.findings if f.kind == "softcap_saturation"]
    assert sat, [f.kind for f in report.findings]
    healthy = layerbisect.compare(gguf, cand, options=CompareOptions(tokens=IDS, generate=0, localize=False))
    assert not [f for f in healthy.findings if f.kind == "softcap_saturation" and f.severity != "info"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerbisect.cli.app", *args], capture_output=True, text=True)


def test_gate_exit_codes(tiny_quantized, tmp_path):
    gguf, cand = tiny_quantized("gemma3", "FP8")
    lenient = tmp_path / "gate.toml"
    lenient.write_text("[default]\nmin_cosine = 0.9\nmax_rel_l2 = 0.5\n")
    ok = _cli(str(gguf), str(cand), "--tokens", "2,5,6,7,8,9", "-n", "2", "--out", str(tmp_path / "a"),
              "--gate", str(lenient), "--junit", str(tmp_path / "j.xml"), "--no-localize")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    assert (tmp_path / "a" / "report.html").is_file() and (tmp_path / "j.xml").is_file()
    strict = tmp_path / "strict.toml"
    strict.write_text("[default]\nmin_cosine = 0.999999\n")
    bad = _cli(str(gguf), str(cand), "--tokens", "2,5,6,7,8,9", "-n", "2", "--out", str(tmp_path / "b"),
               "--gate", str(strict), "--no-localize")
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-2000:]
    # a baseline from the first run passes against itself
    again = _cli(str(gguf), str(cand), "--tokens", "2,5,6,7,8,9", "-n", "2", "--out", str(tmp_path / "a"),
                 "--gate", str(lenient), "--baseline", str(tmp_path / "a" / "report.json"), "--no-localize")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    # bad input: a gate file that is not TOML
    junk = tmp_path / "junk.toml"
    junk.write_text("this is [not toml")
    res = _cli(str(gguf), str(cand), "--gate", str(junk), "--out", str(tmp_path / "c"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr


def test_same_inputs_give_identical_json(tiny_quantized):
    gguf, cand = tiny_quantized("qwen3", "FP8_DYNAMIC")
    a = layerbisect.compare(gguf, cand, options=CompareOptions(tokens=IDS, generate=2)).to_json()
    b = layerbisect.compare(gguf, cand, options=CompareOptions(tokens=IDS, generate=2)).to_json()
    assert a == b


def test_wrong_model_is_input_error(tiny_quantized):
    gguf, _ = tiny_quantized("gemma3", "FP8")
    _, other = tiny_quantized("qwen3", "FP8_DYNAMIC")
    with pytest.raises(layerbisect.errors.InputError, match="not the same model"):
        layerbisect.compare(gguf, other, options=CompareOptions(tokens=IDS, generate=0))


def test_concurrent_jobs_give_the_sequential_report(tiny_quantized):
    """The expected lane, the patching and the audits' measurements in threads beside the comparison (what two
    devices do, ``jobs.py``; forced here on one CPU): the report the sequential pipeline writes, byte for byte."""
    gguf, cand = tiny_quantized("gemma3", "FP8")  # static input scales: the lane calibrates, the audits probe
    seq = layerbisect.compare(gguf, cand, options=CompareOptions(tokens=IDS, generate=2, concurrent=False))
    con = layerbisect.compare(gguf, cand, options=CompareOptions(tokens=IDS, generate=2, concurrent=True))
    assert con.record.runtime.concurrent and not seq.record.runtime.concurrent
    assert con.record.noise is not None and con.record.localization is not None and con.record.audits is not None
    assert con.to_json() == seq.to_json()
