from __future__ import annotations

import math

import pytest
import torch

from layerbisect.capture import Captures
from layerbisect.comparison.comparator import POINT_COLUMNS, compare_captures
from layerbisect.comparison.findings import Finding, detect_all, sort_findings
from layerbisect.comparison.results import Thresholds
from layerbisect.comparison.synthetic import plant_growing_scale, plant_nan, saturate_logits, synthetic_pair


def kinds(findings):
    return [f.kind for f in findings]


def by_kind(findings, kind):
    hits = [f for f in findings if f.kind == kind]
    assert hits, f"no {kind!r} finding in {kinds(findings)}"
    return hits[0]


def test_healthy_run_has_no_problem_findings():
    ref, cand, info = synthetic_pair()
    cmp = compare_captures(ref, cand, info)
    assert list(cmp.df.columns) == list(POINT_COLUMNS)
    assert len(cmp.df) == len(cmp.points) * 8
    assert all(cmp.points.values())
    fs = detect_all(cmp)
    assert {f.severity for f in fs} <= {"info"}, [(f.kind, f.title) for f in fs]
    assert "softcap_saturation" not in kinds(fs)
    assert cmp.logits is not None and cmp.logits.top1_agreement == 1.0


def test_nan_onset_names_exact_layer_op_token():
    ref, cand, info = synthetic_pair()
    plant_nan(cand, "layers.2.mlp.down", 3)
    fs = detect_all(compare_captures(ref, cand, info))
    f = by_kind(fs, "nonfinite_onset")
    assert (f.point, f.layer, f.op, f.token_index) == ("layers.2.mlp.down", 2, "mlp.down", 3)
    assert f.severity == "critical" and fs[0] is f  # the cause sorts first
    assert "reference_nonfinite" not in kinds(fs)


def test_reference_nan_reported_separately():
    ref, cand, info = synthetic_pair()
    plant_nan(ref, "layers.1.attn.q", 5, spread=False)
    fs = detect_all(compare_captures(ref, cand, info))
    f = by_kind(fs, "reference_nonfinite")
    assert (f.point, f.token_index) == ("layers.1.attn.q", 5)
    assert "nonfinite_onset" not in kinds(fs)


def test_blowup_onset_and_monotonic_residual_growth():
    ref, cand, info = synthetic_pair()
    plant_growing_scale(cand, from_layer=1, factor=2.0, final_softcap=info.final_softcap)
    fs = detect_all(compare_captures(ref, cand, info))
    f = by_kind(fs, "norm_blowup")
    assert f.layer == 1 and f.point == "layers.1.attn_norm"
    assert f.evidence["max_norm_ratio"] == pytest.approx(2.0, rel=0.01)
    g = by_kind(fs, "residual_growth")
    assert g.layer == 1 and g.evidence["layers"] == [0, 1, 2, 3]


def test_growth_below_threshold_is_not_blowup():
    ref, cand, info = synthetic_pair()
    plant_growing_scale(cand, from_layer=1, factor=1.1, final_softcap=info.final_softcap)
    fs = detect_all(compare_captures(ref, cand, info))
    assert "norm_blowup" not in kinds(fs) and "residual_growth" not in kinds(fs)


def test_softcap_saturation_fires_only_when_logits_hit_the_wall():
    ref, cand, info = synthetic_pair()
    saturate_logits(cand, cap=30.0)
    cmp = compare_captures(ref, cand, info)
    f = by_kind(detect_all(cmp), "softcap_saturation")
    assert f.severity == "critical" and f.point == "logits.pre_softcap"
    assert f.evidence["cand_share"] > 0.2 and f.evidence["ref_share"] == 0.0
    assert f.evidence["cand_max_pre_softcap"] > 30 * math.atanh(0.99)
    assert f.token_index == 0


def test_attention_softcap_saturation():
    ref, cand, info = synthetic_pair(attn_softcap=50.0)
    cand.tensors["layers.2.attn.scores"] = cand.tensors["layers.2.attn.scores"] * 1000
    cmp = compare_captures(ref, cand, info)
    att = [s for s in cmp.saturation if s.kind == "attention"]
    assert [s.layer for s in att] == [0, 1, 2, 3]
    f = by_kind(detect_all(cmp), "softcap_saturation")
    assert f.layer == 2 and f.op == "attn.scores" and f.severity == "error"


def test_first_divergence_and_most_divergent_layer():
    ref, cand, info = synthetic_pair()
    g = torch.Generator().manual_seed(1)
    # Layer 1 adds a big error to its MLP output; the residual carries it on.
    for name in ["layers.1.mlp.down", "layers.1.out", "layers.2.attn_norm"]:
        x = cand.tensors[name]
        cand.tensors[name] = x + 0.5 * x.std() * torch.randn(x.shape, generator=g)
    fs = detect_all(compare_captures(ref, cand, info))
    f = by_kind(fs, "first_divergence")
    assert f.point == "layers.1.mlp.down" and f.evidence["min_cosine"] < 0.99
    m = by_kind(fs, "most_divergent_layer")
    assert m.layer == 1 and m.op == "mlp.down"


def test_tokenizer_mismatch_and_position_alignment():
    ref, cand, info = synthetic_pair()
    cand.token_ids[4] = (cand.token_ids[4] + 1) % 128
    ref.meta["tokenizer_fingerprint"] = "aaa"
    cand.meta["tokenizer_fingerprint"] = "bbb"
    cmp = compare_captures(ref, cand, info)
    assert cmp.positions == [0, 1, 2, 3, 5, 6, 7] and cmp.token_mismatch == [4]
    fs = [f for f in detect_all(cmp) if f.kind == "tokenizer_mismatch"]
    assert len(fs) == 2 and any(f.token_index == 4 for f in fs)


def test_positions_argument_and_missing_points():
    ref, cand, info = synthetic_pair()
    del cand.tensors["layers.3.mlp_norm"]  # a loader that dropped a norm
    cmp = compare_captures(ref, cand, info, positions=[0, -1])
    assert cmp.positions == [0, 7]
    assert cmp.only_ref == ["layers.3.mlp_norm"]
    assert by_kind(detect_all(cmp), "missing_points").evidence["only_ref"] == ["layers.3.mlp_norm"]


def test_summary_only_still_finds_nan_and_blowup():
    ref, cand, info = synthetic_pair()
    plant_nan(cand, "layers.1.mlp.up", 2, spread=False)
    plant_growing_scale(cand, from_layer=2, factor=3.0)
    summ = Captures(token_ids=cand.token_ids, summary_only=True)
    for n, x in cand.tensors.items():
        summ.record(n, x)
    cmp = compare_captures(ref, summ, info)
    assert not any(r.full for r in cmp.points.values())
    fs = detect_all(cmp)
    assert by_kind(fs, "nonfinite_onset").point == "layers.1.mlp.up"
    assert by_kind(fs, "norm_blowup").layer == 2


def test_thresholds_drive_detectors():
    ref, cand, info = synthetic_pair(noise=0.05)
    strict = detect_all(compare_captures(ref, cand, info, thresholds=Thresholds(min_cosine=0.99999)))
    assert "first_divergence" in kinds(strict)
    loose = detect_all(compare_captures(ref, cand, info, thresholds=Thresholds(min_cosine=0.9)))
    assert "first_divergence" not in kinds(loose)


def test_sort_findings_severity_then_execution_order():
    order = {"embed": 0, "layers.0.out": 5, "layers.1.out": 9}
    fs = [
        Finding("info", "x", "a", point="embed"),
        Finding("error", "culprit", "b", point="layers.1.out"),
        Finding("error", "weight_audit", "c", layer=0),
        Finding("critical", "x", "d"),
        Finding("error", "x", "e", point="layers.0.out"),
    ]
    assert [f.title for f in sort_findings(fs, order)] == ["d", "c", "e", "b", "a"]
    with pytest.raises(ValueError):
        Finding("fatal", "x", "bad")


def test_sub_op_error_absorbed_by_residual_is_a_warning():
    """A noisy post-norm whose error the residual stream absorbs is flagged, but not as an error."""
    from layerbisect.capture import Captures
    from layerbisect.comparison import ModelInfo, compare_captures
    from layerbisect.comparison.findings import detect_first_divergence

    g = torch.Generator().manual_seed(0)
    ref, cand = Captures(token_ids=[1, 2, 3, 4]), Captures(token_ids=[1, 2, 3, 4])
    for name in ("embed", "layers.0.mlp.post_norm", "layers.0.out"):
        x = torch.randn(4, 32, generator=g)
        ref.record(name, x)
        noisy = x + (2.0 if name.endswith("post_norm") else 1e-4) * torch.randn(4, 32, generator=g)
        cand.record(name, noisy)
    cmp = compare_captures(ref, cand, ModelInfo(arch="llama", n_layers=1))
    f = detect_first_divergence(cmp)[0]
    assert f.point == "layers.0.mlp.post_norm" and f.severity == "warning", f
    assert "absorbed" in f.detail
    # the same divergence reaching the residual stream stays an error
    cand2 = Captures(token_ids=[1, 2, 3, 4])
    for name in ref.names():
        cand2.record(name, ref[name] + 2.0 * torch.randn(4, 32, generator=g) if name != "embed" else ref[name])
    f2 = detect_first_divergence(compare_captures(ref, cand2, ModelInfo(arch="llama", n_layers=1)))[0]
    assert f2.severity == "error"


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_comparison_on_a_device_gives_the_host_numbers(device: str) -> None:
    """``compare_captures(device=...)``: every point's rows reduced on the device, the numbers brought back at once.
    On the CPU that round trip changes no bit; on a GPU float64 sums run in another order (last digits only)."""
    ref, cand, info = synthetic_pair()
    plant_nan(cand, "layers.2.mlp.down", 3)  # NaN rows, counts and the summary path alike
    host, dev = compare_captures(ref, cand, info), compare_captures(ref, cand, info, device=device)
    assert list(dev.points) == list(host.points)
    for col in POINT_COLUMNS:
        a, b = host.df[col], dev.df[col]
        if a.dtype.kind == "f":
            tol = 0.0 if device == "cpu" else 1e-12
            close = (a - b).abs() <= tol * (1 + a.abs())
            assert (close | (a.isna() & b.isna()) | (a == b)).all(), col
        else:
            assert a.equals(b), col
    for name, p in host.points.items():
        assert p.n_tokens == dev.points[name].n_tokens and p.ref_nonfinite == dev.points[name].ref_nonfinite


def test_identical_sides_say_so_and_name_no_layer():
    ref, _, info = synthetic_pair(noise=1e-3)
    cmp = compare_captures(ref, ref, info)
    kinds = [f.kind for f in detect_all(cmp)]
    assert "identical" in kinds and "most_divergent_layer" not in kinds, kinds
    _, cand, _ = synthetic_pair(noise=1e-3)
    assert "identical" not in [f.kind for f in detect_all(compare_captures(ref, cand, info))]
