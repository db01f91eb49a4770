"""Each planted fault is diagnosed with the right layer, op and cause; correct candidates raise no alarm.

The broken candidates are copies of what the real producer wrote (layerbisect/faults.py);
docs/FAULTS.md shows the diagnoses these tests pin.
"""

from __future__ import annotations

import pytest

from layerbisect import faults
from layerbisect.producers.quantize import SCHEMES


def _culprit(report):
    cs = [f for f in report.findings if f.kind == "culprit"]
    assert cs, [f.title for f in report.findings]
    return cs[0]


def _kinds(report) -> set[str]:
    return {f.kind for f in report.findings}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(faults.CASES))
def test_fault_case_is_diagnosed(name: str, fault_root) -> None:
    case = faults.CASES[name]
    res = faults.run_case(name, fault_root)
    report, audit = res["report"], res["audit"]
    top = _culprit(report)
    text = faults.diagnosis_text(report, 6)
    assert top.evidence.get("cause") == case.expect_cause, text
    assert f"[{case.expect_cause}]" in top.title
    assert top.severity == "critical", text
    # where: the localizer's layer, or the layer of the evidence that explains it
    layers = {top.layer, top.evidence.get("cause_layer")}
    assert case.expect_layer in layers, text
    if case.expect_op:
        ops = {top.op or "", top.evidence.get("cause_op") or ""}
        stem = case.expect_op.split(".")[-1].replace("post_norm", "post_attn_norm")
        assert any(o.startswith(case.expect_op) or stem in o for o in ops), (ops, text)
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


def test_input_scale_overflow_saturates_without_the_engine_fault(fault_root) -> None:
    """Without the non-saturating cast the emulation clips (like the producer): no NaN, same cause."""
    from layerbisect.pipeline import CompareOptions, compare

    clean = faults.clean_candidate(fault_root, faults.tiny_sources(fault_root, ("gemma2",))["gemma2"], "gemma2",
                                   "NVFP4")
    ids = faults.prompt_ids_for(clean)
    broken = faults.input_scale_overflow(clean, fault_root / "overflow-saturating")
    report = compare(fault_root / "gemma2.gguf", broken, options=CompareOptions(prompt=None, tokens=ids, generate=0))
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
