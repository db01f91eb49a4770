"""Each planted fault is diagnosed with the right layer, op and cause; correct candidates raise no alarm.

The broken candidates are copies of what the real producer wrote (layerbisect/faults.py);
docs/FAULTS.md shows the diagnoses these tests pin.
"""

from __future__ import annotations

import pytest

from layerbisect import faults
from layerbisect.comparison.gate import GateConfig
from layerbisect.producers.quantize import SCHEMES


def _culprit(report):
    cs = [f for f in report.findings if f.kind == "culprit"]
    assert cs, [f.title for f in report.findings]
    return cs[0]


def _kinds(report) -> set[str]:
    return {f.kind for f in report.findings}


@pytest.mark.slow
@pytest.mark.long  # every case of the suite, ~30 s each on 2 cores: `make test-long` (CI runs the rest)
@pytest.mark.parametrize("name", list(faults.CASES))
def test_fault_case_is_diagnosed(name: str, fault_root) -> None:
    case = faults.CASES[name]
    if case.arch in ("qwen35", "qwen3moe"):  # their GGUFs come from llama.cpp's own converter
        pytest.importorskip("layerbisect.producers.llamacpp", reason="needs llama.cpp's converter")
    res = faults.run_case(name, fault_root)
    report, audit = res["report"], res["audit"]
    top = _culprit(report)
    text = faults.diagnosis_text(report, 6)
    assert not res["problems"], text  # the headline culprit: planted layer and op, right cause, critical
    assert top.evidence.get("cause") == case.expect_cause and f"[{case.expect_cause}]" in top.title, text
    kinds = _kinds(report)
    if name == "double_scale_norms":  # seed 000: norm blow-up and the logits pinned at the softcap
        assert {"norm_blowup", "softcap_saturation"} <= kinds, text
        assert audit.by_cause().keys() == {"double_scale"}
        assert all(abs(r.alpha - 8.0) < 0.05 for r in audit.faults)
    elif name == "input_scale_overflow":  # seed 002: NaN from layer 0, predicted by the headroom audit
        nan = [f for f in report.findings if f.kind == "nonfinite_onset"]
        assert nan and nan[0].layer == 0, text
        over = [f for f in report.findings if f.kind == "act_scale_overflow"][0]
        assert over.layer == 0 and over.op == "attn.q_proj" and over.evidence["worst"]["ratio"] > 100
        assert audit.ok  # the weights are fine: only the activation scale is wrong
    elif name == "kv_scales_garbage":
        kv = [f for f in report.findings if f.kind == "kv_cache_scale"][0]
        assert kv.layer == 1 and kv.severity == "critical"
        assert audit.ok
    elif name == "dropped_norms":
        assert "missing_tensor" in kinds
        assert {r.name for r in audit.faults} == {"layers.0.mlp_norm.weight", "layers.1.mlp_norm.weight"}
    elif name == "global_scale_inverted":
        (row,) = audit.faults
        assert row.name == "layers.1.mlp.gate_proj.weight" and row.cause == "scale_inverted"
        assert row.evidence["k"] == pytest.approx(-2.0, abs=0.05)
    elif name == "nibble_swap":
        assert {r.layer for r in audit.faults} == {1} and len(audit.faults) == 7
        assert {r.cause for r in audit.faults} == {"nibble_order"}
        assert all(r.evidence["restored_cosine"] > 0.99 for r in audit.faults)
    elif name == "expert_weight_scale":  # Qwen3-MoE: one expert of one layer, named by its index
        (row,) = audit.faults
        assert (row.name, row.layer, row.cause) == ("layers.1.mlp.experts.5.down_proj.weight", 1, "scale_mismatch")
        assert row.alpha == pytest.approx(4.0, abs=0.05)
        assert "layers.1.mlp.experts.5.down_proj" in top.detail, text
    elif name in ("g4_norm_act_unscaled", "g4_double_scale_norms"):  # seed 000 on Gemma 4
        _check_seed000(report, text)
        if name == "g4_norm_act_unscaled":
            assert audit.ok  # the checkpoint is fine: the engine re-scales
        else:
            assert audit.by_cause().keys() == {"double_scale"}
            assert all(abs(r.alpha - 8.0) < 0.05 for r in audit.faults) and len(audit.faults) == 13
    elif name in ("g4_dropped_ffn_norms", "g4_missing_layer_scalars", "g4_missing_router_scales"):  # seed 004
        missing = [f for f in report.findings if f.kind == "missing_tensor"]
        assert missing and missing[0].severity == "critical" and missing[0].layer == 0, text
        want = {"g4_dropped_ffn_norms": ({"mlp_norm", "post_mlp_norm"}, "missing_norm"),
                "g4_missing_layer_scalars": ({"layer_scalar"}, "missing_scale"),
                "g4_missing_router_scales": ({"mlp.router_scale", "mlp.expert_scale"}, "missing_scale")}[name]
        assert {r.op for r in audit.faults} == want[0] and {r.cause for r in audit.faults} == {want[1]}
        assert {r.layer for r in audit.faults} == set(range(6))
    elif name == "g4_global_head_dim_dump":  # seed 004's engine: global-layer rows overflow a sliding-sized buffer
        first = [f for f in report.findings if f.kind == "first_divergence"][0]
        assert (first.layer, first.op) == (5, "attn.v"), text
        pts = report.df[report.df["layer"] < 5]
        assert pts["cosine"].min() > 0.9999, "the sliding layers before it must match exactly"
        assert audit is None

    elif name == "kv_calibration_garbage_state":  # seed 003: the first attention layer behind garbage state
        kv = [f for f in report.findings if f.kind == "kv_calibration"][0]
        assert (kv.layer, kv.op, kv.evidence["recurrent_layer"]) == (3, "attn.k", 2), text
        assert kv.evidence["garbage_layers"] == [1, 2, 4], text
        assert not any(p.startswith("layers.0.") for p in kv.evidence["far_off"]), "nothing recurrent before layer 0"
        assert audit.ok  # the checkpoint is right: the calibration pass was not
    elif name == "fused_shard_scale":  # vLLM 38197
        wa = [f for f in report.findings if f.kind == "weight_audit"][0]
        assert wa.evidence["cause"] == "shard_scale" and wa.evidence["tensors"] == ["layers.1.attn.in_proj_qkv.weight"]
        shards = wa.evidence["shards"]
        assert [(s["shard"], s["rows"]) for s in shards] == [("q", [0, 64]), ("k", [64, 128]), ("v", [128, 256])]
        assert abs(shards[0]["alpha"] - 1) < 0.02 and all(s["alpha"] > 100 for s in shards[1:]), shards
        assert "rows 64:256 (k, v)" in wa.detail, wa.detail
        assert audit.ok  # the checkpoint is right: the engine's loader is not


def _check_seed000(report, text: str) -> None:
    """Seed 000's symptoms: residual blow-up from layer 0, logits pinned at the final softcap (30), collapse."""
    blow = [f for f in report.findings if f.kind == "norm_blowup"][0]
    assert blow.layer == 0 and blow.op == "attn.post_norm", text
    sat = [f for f in report.findings if f.kind == "softcap_saturation"][0]
    assert sat.severity == "critical" and sat.evidence["cand_share"] > 0.05 and sat.evidence["ref_share"] == 0.0
    assert all(abs(v - 30.0) < 0.5 for _, v in sat.evidence["cand_top"])  # pinned at the cap (bf16 prints 30)
    assert all(v < 28.0 for _, v in sat.evidence["ref_top"])
    assert "(as bf16 prints them): candidate [30 (id" in sat.detail


def test_input_scale_overflow_saturates_without_the_engine_fault(fault_root) -> None:
    """Without the non-saturating cast the emulation clips (like the producer): no NaN, same cause."""
    from layerbisect.pipeline import CompareOptions, compare

    src = faults.tiny_sources(fault_root, ("gemma2",))["gemma2"]
    clean = faults.clean_candidate(fault_root, src, "gemma2", "NVFP4")
    ids = faults.prompt_ids_for(clean)
    broken = faults.input_scale_overflow(clean, fault_root / "overflow-saturating")
    report = compare(src["gguf"], broken, options=CompareOptions(prompt=None, tokens=ids, generate=0))
    assert "nonfinite_onset" not in _kinds(report)
    top = _culprit(report)
    assert top.evidence["cause"] == "act_scale_overflow" and top.layer == 0


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_false_alarm_on_correct_candidates(scheme: str, fault_root) -> None:
    from layerbisect.api import audit_weights

    src = faults.tiny_sources(fault_root, ("gemma2",))["gemma2"]
    clean = faults.clean_candidate(fault_root, src, "gemma2", scheme)
    audit = audit_weights(src["gguf"], clean)
    assert audit.ok, audit.summary_text()
    assert all(r.cosine > 0.99 and abs(r.alpha - 1) < 0.02 for r in audit.rows), audit.summary_text()
    assert len(audit.rows) == 24


def test_no_false_alarm_in_compare(fault_root) -> None:
    """A correct candidate through the whole pipeline: the culprit's cause is quantization noise."""
    from layerbisect.pipeline import CompareOptions, compare

    src = faults.tiny_sources(fault_root, ("gemma2",))["gemma2"]
    clean = faults.clean_candidate(fault_root, src, "gemma2", "FP8")
    report = compare(src["gguf"], clean, options=CompareOptions(prompt=None, tokens=faults.prompt_ids_for(clean),
                                                                generate=0))
    top = _culprit(report)
    assert top.evidence["cause"] == "quantization_noise", faults.diagnosis_text(report)
    assert top.severity != "critical"
    assert not [f for f in report.findings if f.kind in ("weight_audit", "act_scale_overflow", "kv_cache_scale")
                and f.severity == "critical"]
    assert report.record.audits is not None and report.record.audits.weights
    noise = report.record.noise  # the expected lane ran and explains every point
    assert noise is not None and noise.points and not noise.beyond_points, noise.sections()[-1].text
    assert noise.layers and all(r.verdict == "noise" for r in noise.layers)
    assert any(s.key == "candidate-vs-expected" for s in report.sections)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_clean_scheme_raises_no_alarm(scheme: str, fault_root) -> None:
    """The producer's checkpoint as written: no critical finding, the built-in (noise-derived) gate passes."""
    res = faults.run_clean(fault_root, scheme)
    report, gate = res["report"], res["gate"]
    crit = [f"{f.kind}: {f.title}" for f in report.findings if f.severity == "critical"]
    assert not crit, crit
    assert gate.passed, gate.failures
    assert report.record.noise is not None and not report.record.noise.beyond_points
    assert "expected lane" in GateConfig.builtin_for(report).source


@pytest.mark.slow
def test_noise_aware_bisect_names_the_scaled_down_projection(fault_root) -> None:
    """Issue 17: a ×8 weight scale on one down projection, absorbed by the post-FFN norm. Judged against the
    expected lane, the bisect finds that module alone instead of the format's noise in healthy layers."""
    from layerbisect.bisect_modules import bisect_report
    from layerbisect.pipeline import CompareOptions, compare

    src = faults.tiny_sources(fault_root, ("gemma3",))["gemma3"]
    clean = faults.clean_candidate(fault_root, src, "gemma3", "FP8")
    ids = faults.prompt_ids_for(clean)
    broken = faults.scale_weight_scale(clean, fault_root / "bisect-down-x8", "layers.3.mlp.down_proj", 8.0)
    o = CompareOptions(prompt=None, tokens=ids, generate=0, localize=False)
    report = compare(src["gguf"], broken, options=o)
    assert report.record.noise is not None
    res = bisect_report(report, src["gguf"], broken, o)  # the built-in gate of this run: from the expected lane
    assert res.culprits == ["layers.3.mlp.down_proj"], res
    assert res.after_passed


@pytest.mark.slow
@pytest.mark.parametrize("kv", ["unit", "prompt"])
def test_seed_003_unit_and_prompt_calibrated_scales_are_clean(kv: str, fault_root) -> None:
    """The same tiny Qwen3.5 and candidate as the seed-003 case, FP8 KV cache with unit scales or scales
    calibrated on the prompt itself: no KV finding, nothing non-finite, residual stream close."""
    from layerbisect.kv_cache import KVCacheOptions
    from layerbisect.pipeline import CompareOptions, compare

    pytest.importorskip("layerbisect.producers.llamacpp", reason="needs llama.cpp's converter")
    src = faults.tiny_sources(fault_root, ("qwen35",))["qwen35"]
    clean = faults.clean_candidate(fault_root, src, "qwen35", "FP8_DYNAMIC")
    opts = KVCacheOptions(dtype="fp8_e4m3", scales="unit") if kv == "unit" else \
        KVCacheOptions(dtype="fp8_e4m3", scales="calibrate", calibration="prompt")
    report = compare(src["gguf"], clean, options=CompareOptions(prompt=None, tokens=faults.prompt_ids_for(clean),
                                                                generate=0, kv_cache=opts, localize=False))
    kinds = _kinds(report)
    assert not kinds & {"kv_calibration", "kv_cache_scale", "nonfinite_onset"}, faults.diagnosis_text(report, 6)
    df = report.df
    outs = df[df["point"].str.match(r"layers\.\d+\.out$")]
    assert outs["cosine"].min() > 0.98, outs.groupby("point")["cosine"].min()
    assert report.record.quantization.kv_cache.startswith("fp8_e4m3")
