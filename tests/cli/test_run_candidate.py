"""`bisect run CHECKPOINT_DIR` runs the candidate alone, like the reference."""

from __future__ import annotations

import subprocess
import sys


def test_run_candidate_dir(tiny_quantized):
    _, cand = tiny_quantized("gemma3", "NVFP4")
    res = subprocess.run(
        [sys.executable, "-m", "layerbisect.cli.app", "run", str(cand), "--tokens", "2,10,11,12", "-n", "3",
         "--kv-cache-dtype", "fp8_e4m3", "--kv-scales", "calibrate"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "generated ids" in res.stdout and "residual stream per layer" in res.stdout


def test_kv_scales_checkpoint_without_scales_is_input_error(tiny_quantized):
    _, cand = tiny_quantized("gemma3", "FP8")
    res = subprocess.run(
        [sys.executable, "-m", "layerbisect.cli.app", "run", str(cand), "--tokens", "2,10",
         "--kv-cache-dtype", "fp8_e4m3", "--kv-scales", "checkpoint"],
        capture_output=True, text=True,
    )
    assert res.returncode == 2 and "k_scale" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_run_with_hf_tokenizer(tiny_models):
    m = tiny_models["llama"]
    res = subprocess.run(
        [sys.executable, "-m", "layerbisect.cli.app", "run", str(m["gguf"]), "--tokenizer", str(m["hf"]),
         "--prompt", "the quick brown fox", "-n", "2"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    from layerbisect.tokenizer import tokenizer_from_hf

    ids = tokenizer_from_hf(m["hf"]).encode("the quick brown fox")
    assert f"prompt ids: {ids}" in res.stdout.replace("\n", "")


def test_norm_act_quant_whatif_from_the_cli(tiny_quantized):
    """Seed 000's what-if from the command line: the residual stream climbs; a bad value is one clean error."""
    _, cand = tiny_quantized("gemma3", "FP8_BLOCK")

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "layerbisect.cli.app", "run", str(cand), "--tokens", "2,10,11,12",
                               "-n", "1", *extra], capture_output=True, text=True)

    plain, unscaled = run(), run("--norm-act-quant", "unscaled")
    assert plain.returncode == 0 and unscaled.returncode == 0, unscaled.stderr[-2000:]
    assert plain.stdout != unscaled.stdout
    bad = run("--norm-act-quant", "twice")
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "--norm-act-quant" in lines[0], bad.stderr


def test_kv_calibration_needs_calibrated_scales(tiny_quantized):
    """--kv-calibration chooses the pass of --kv-scales calibrate; with other scales it is one clear error."""
    _, cand = tiny_quantized("gemma3", "FP8")
    res = subprocess.run(
        [sys.executable, "-m", "layerbisect.cli.app", "run", str(cand), "--tokens", "2,10",
         "--kv-cache-dtype", "fp8_e4m3", "--kv-scales", "unit", "--kv-calibration", "zeros"],
        capture_output=True, text=True,
    )
    assert res.returncode == 2 and "--kv-calibration" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "layerbisect.cli.app", "run", str(cand), "--tokens", "2,10,11,12",
         "--kv-cache-dtype", "fp8_e4m3", "--kv-scales", "calibrate", "--kv-calibration", "random"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
