"""Module bisect on real runs, and the `bisect audit` command's exit codes and files."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from layerbisect import faults
from layerbisect.comparison.gate import GateConfig
from layerbisect.comparison.results import Thresholds
from layerbisect.pipeline import CompareOptions, compare

# NVFP4 on a 2-layer random model already misses the default logit gate (KL ~0.7): judge the
# bisect on structure (cosine, norm blow-up, NaN), which the clean candidate passes.
LOOSE = GateConfig(default=Thresholds(min_cosine=0.5, max_rel_l2=None, max_norm_ratio=10.0, max_kl=None,
                                      min_top1=None, max_saturation=None), rules=[])


@pytest.fixture(scope="module")
def llama_nvfp4(fault_root):
    src = faults.tiny_sources(fault_root, ("llama",))["llama"]
    clean = faults.clean_candidate(fault_root, src, "llama", "NVFP4A16")
    return src["gguf"], clean, faults.prompt_ids_for(clean)


@pytest.mark.slow
def test_bisect_finds_the_one_broken_module(llama_nvfp4, fault_root, monkeypatch) -> None:
    from layerbisect import bisect_modules as bm

    ref, clean, ids = llama_nvfp4
    broken = faults.global_scale_inverted(clean, fault_root / "bisect-gsi", module="layers.1.mlp.gate_proj")
    o = CompareOptions(prompt=None, tokens=ids, generate=0, localize=False)
    report = compare(ref, broken, options=o)
    calls = {"n": 0}
    real = bm.ModuleBisect.step

    def counting(self, ok):
        calls["n"] += 1
        return real(self, ok)

    monkeypatch.setattr(bm.ModuleBisect, "step", counting)
    res = bm.bisect_report(report, ref, broken, o, LOOSE)
    assert res.culprits == ["layers.1.mlp.gate_proj"] and res.n_modules == 14
    assert calls["n"] <= 2 + math.ceil(math.log2(14)) + 1
    assert res.runs == calls["n"] + 1  # + the confirming run with the culprit at reference precision
    assert res.before["min_residual_cosine"] < 0.5 < res.after["min_residual_cosine"] and res.after_passed
    top = [f for f in report.findings if f.kind == "culprit"][0]
    assert top.title.startswith("bisect: module layers.1.mlp.gate_proj") and top.evidence["runs"] == res.runs
    assert any(s.title.startswith("Module bisect") for s in report.sections)


def test_bisect_says_when_the_linears_are_not_to_blame(fault_root, llama_nvfp4) -> None:
    from layerbisect.bisect_modules import bisect_report

    ref, clean, ids = llama_nvfp4
    broken = faults.dropped_norms(clean, fault_root / "bisect-norms", norm="post_attention_layernorm")
    o = CompareOptions(prompt=None, tokens=ids, generate=0, localize=False)
    report = compare(ref, broken, options=o)
    res = bisect_report(report, ref, broken, o, GateConfig.builtin())
    assert res.verdict == "not_in_linears" and res.runs == 1 + 1  # the empty-set run, then `before`
    assert any(f.kind == "bisect" and "outside the linears" in f.title for f in report.findings)


def test_audit_cli_exit_codes_and_files(llama_nvfp4, fault_root, tmp_path) -> None:
    from layerbisect.cli.app import app

    ref, clean, _ = llama_nvfp4
    broken = faults.swap_nibbles(clean, fault_root / "cli-nibbles", layer=0)
    r = CliRunner().invoke(app, ["audit", str(ref), str(clean)])
    assert r.exit_code == 0, r.output
    assert "no fault in 21 tensors" in r.output
    r = CliRunner().invoke(app, ["audit", str(ref), str(broken), "--out", str(tmp_path / "a")])
    assert r.exit_code == 1, r.output
    assert "nibble_order" in r.output and "layers.0.attn.q_proj.weight" in r.output
    data = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert not data["ok"] and {f["cause"] for f in data["faults"]} == {"nibble_order"}
    assert "nibble_order" in (tmp_path / "a" / "audit.md").read_text()
    r = CliRunner().invoke(app, ["audit", str(ref), str(tmp_path / "nope")])
    assert r.exit_code == 2
    gemma2 = faults.tiny_sources(fault_root, ("gemma2",))["gemma2"]["gguf"]
    r = CliRunner().invoke(app, ["audit", str(gemma2), str(clean)])
    assert r.exit_code == 2  # not the same model


def test_bisect_from_the_cli(llama_nvfp4, fault_root, tmp_path) -> None:
    """`bisect REF CAND --bisect` as a user runs it: names the module, fails the gate (exit 1)."""
    from layerbisect.cli.app import app

    ref, clean, ids = llama_nvfp4
    broken = faults.global_scale_inverted(clean, fault_root / "cli-bisect", module="layers.1.mlp.gate_proj")
    gate = tmp_path / "gate.toml"
    gate.write_text("[default]\nmin_cosine = 0.5\nmax_rel_l2 = false\nmax_norm_ratio = 10.0\nmax_saturation = false\n"
                    "[[rule]]\npattern = \"logits*\"\nmax_kl = false\nmin_top1 = false\n")
    args = ["compare", str(ref), str(broken), "--tokens", ",".join(map(str, ids)), "-n", "0", "--no-localize",
            "--bisect", "--gate", str(gate), "--out", str(tmp_path / "rep")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    titles = [f["title"] for f in data["findings"]]
    assert any(t.startswith("bisect: module layers.1.mlp.gate_proj") for t in titles), titles[:5]
