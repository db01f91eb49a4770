from __future__ import annotations

import math

import pytest
import torch

from layerbisect.comparison import metrics as M
from layerbisect.comparison.results import LogitResult, PointResult, SaturationResult, Thresholds

nan, inf = math.nan, math.inf


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_cosine_hand_computed_and_edge_cases():
    r = t([[1, 0], [1, 1], [0, 0], [0, 0], [1, 2], [1, inf]])
    c = t([[0, 1], [2, 2], [0, 0], [1, 0], [nan, 2], [1, 1]])
    got = M.cosine(r, c).tolist()
    assert got[0] == pytest.approx(0.0)
    assert got[1] == pytest.approx(1.0)
    assert got[2] == 1.0  # both zero: identical
    assert got[3] == 0.0  # one zero
    assert math.isnan(got[4]) and math.isnan(got[5])


def test_cosine_casts_up_before_subtracting():
    # Large FP32 values differing in the last place must still give cos ≈ 1, not drift from rounding.
    r = torch.full((1, 4096), 3.0e4)
    assert M.cosine(r, r.clone()).item() == 1.0
    assert M.rel_l2(r, r.clone()).item() == 0.0


def test_rel_l2_norm_ratio_max_abs_sqnr():
    r = t([[3, 4], [0, 0], [0, 0], [1, 0]])
    c = t([[3, 4 + 5], [0, 0], [1, 0], [1, 0]])
    assert M.rel_l2(r, c).tolist()[:3] == [1.0, 0.0, inf]
    nr = M.norm_ratio(r, c).tolist()
    assert nr[0] == pytest.approx(math.sqrt(9 + 81) / 5)
    assert nr[1] == 1.0 and nr[2] == inf and nr[3] == 1.0
    assert M.max_abs(r, c).tolist() == [5.0, 0.0, 1.0, 0.0]
    sq = M.sqnr_db(r, c).tolist()
    assert sq[0] == pytest.approx(10 * math.log10(25 / 25))
    assert sq[1] == inf and sq[2] == -inf and sq[3] == inf


def test_nonfinite_handling():
    r = t([[1, 2], [1, 2]])
    c = t([[inf, 2], [nan, 2]])
    assert M.nonfinite_count(c).tolist() == [1, 1]
    assert M.nan_count(c).tolist() == [0, 1]
    assert M.inf_count(c).tolist() == [1, 0]
    assert all(math.isnan(x) for x in M.rel_l2(r, c).tolist())
    assert all(math.isnan(x) for x in M.max_abs(r, c).tolist())
    nr = M.norm_ratio(r, c).tolist()
    assert nr[0] == inf and math.isnan(nr[1])  # a blow-up that reached Inf stays visible


@pytest.mark.parametrize("width", [0, 1, 7, 4096])
def test_point_metrics_are_the_single_metrics_bit_for_bit(width: int) -> None:
    """The comparison's fused pass (one float64 copy, one difference, one finite check per point) gives exactly
    what each metric function gives alone: zero rows, equal rows, NaN and ±Inf rows, FP32 values near 3e38."""
    g = torch.Generator().manual_seed(0)
    r = torch.randn(9, width, generator=g)
    c = r + 1e-3 * torch.randn(9, width, generator=g)
    if width:
        r[1], c[1] = 0.0, 0.0  # both zero
        r[2] = 0.0  # zero reference, non-zero candidate
        c[3] = r[3]  # identical
        c[4, 0] = math.nan
        r[5, -1] = math.inf
        c[6, 0] = -math.inf
        r[7], c[7] = r[7] * 3e37, c[7] * 3e37  # squares overflow FP32, not float64
    got = M.point_metrics(r, c)
    want = {"cosine": M.cosine(r, c), "rel_l2": M.rel_l2(r, c), "max_abs": M.max_abs(r, c), "sqnr_db": M.sqnr_db(r, c),
            "ref_norm": M.row_norm(r), "cand_norm": M.row_norm(c), "ref_nonfinite": M.nonfinite_count(r),
            "cand_nonfinite": M.nonfinite_count(c)}
    assert tuple(got) == M.POINT_METRICS
    for k in M.POINT_METRICS:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True, msg=lambda m, k=k: f"{k}: {m}")


def test_kl_top1_top5():
    r = t([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, nan, 0.0]])
    c = t([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    kl = M.kl_divergence(r, c).tolist()
    assert kl[0] == pytest.approx(0.0, abs=1e-12)
    p = [1 / 3] * 3
    q = torch.softmax(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 0).tolist()
    assert kl[1] == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=False)))
    assert math.isnan(kl[2])
    assert M.top1_agreement(r, c).tolist() == [True, True, False]
    assert M.topk_overlap(r, c, k=2).tolist()[0] == 1.0


def test_kl_masked_vocab_and_zero_candidate_probability():
    r = t([[0.0, -inf, 0.0]])
    assert M.kl_divergence(r, r).item() == pytest.approx(0.0, abs=1e-12)
    c = t([[0.0, 0.0, -inf]])
    assert M.kl_divergence(r, c).item() == inf


def test_saturation_share_pre_and_post():
    cap = 30.0
    x = t([[0.0, 10.0, 100.0, -200.0], [nan, 1.0, 1.0, 1.0]])
    share = M.saturation_share(x, cap).tolist()
    assert share[0] == 0.5  # 100 and -200 are past cap·atanh(0.99) ≈ 79.4
    assert share[1] == 0.0  # NaN left out
    post = cap * torch.tanh(x[:1] / cap)
    assert M.saturation_share(post, cap, pre_softcap=False).tolist() == [0.5]
    assert M.max_abs_value(x).tolist() == [200.0, 1.0]


def _point(**kw) -> PointResult:
    base = dict(point="layers.0.out", order=0, layer=0, op="out", n_tokens=4, min_cosine=0.999, mean_cosine=0.9995,
                max_rel_l2=0.01, mean_rel_l2=0.005, max_norm_ratio=1.01, mean_norm_ratio=1.0, min_norm_ratio=0.99,
                max_abs=0.1, min_sqnr_db=40.0, ref_nonfinite=0, cand_nonfinite=0, worst_token=1)  # fmt: skip
    base.update(kw)
    return PointResult(**base)


def test_point_result_bool_and_str_say_needed_tolerance():
    ok = _point()
    assert ok and "PASS" in str(ok)
    bad = _point(min_cosine=0.93125)
    assert not bad
    assert "would pass with min_cosine ≤ 0.93125" in str(bad)
    assert not _point(min_cosine=nan)  # NaN never passes
    assert _point(min_cosine=0.5).under(Thresholds(min_cosine=None))  # disabled check
    assert not _point(cand_nonfinite=3)
    assert "max_nonfinite ≥ 3" in str(_point(cand_nonfinite=3))


def test_logit_and_saturation_results():
    lg = LogitResult(n_positions=4, mean_kl=0.5, max_kl=1.0, worst_kl_token=2, top1_agreement=0.75,
                     mean_top5_overlap=0.9, first_top1_mismatch=2)  # fmt: skip
    assert not lg and "max_kl ≥ 0.5" in str(lg) and "min_top1 ≤ 0.75" in str(lg)
    s = SaturationResult("logits.pre_softcap", "final", None, 30.0, 0.0, 0.4, 10.0, 500.0)
    assert not s and "max_saturation ≥ 0.4" in str(s)
    # Both sides at the wall: the model does it by itself, not a quantization bug.
    assert SaturationResult("logits.pre_softcap", "final", None, 30.0, 0.4, 0.41, 500.0, 500.0)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("width", [1, 7, 640, 2048, 70000], ids=lambda w: f"width{w}")
def test_point_metrics_equal_the_single_metrics_bit_for_bit(width):
    # point_metrics replaces one float64 copy per metric with one per side: the values must not move at all,
    # also when the rows of several points are stacked and cut in chunks (F64_CHUNK)
    g = torch.Generator().manual_seed(width)
    r = torch.randn(37, width, generator=g) * 3
    c = r + 1e-3 * torch.randn(37, width, generator=g)
    r[1], c[2] = 0.0, 0.0
    r[3], c[3] = 0.0, 0.0
    r[4, 0], c[5, -1], c[6, 0] = math.nan, math.inf, -math.inf
    c[7] = r[7]
    got = M.point_metrics(r, c)
    _same(got["cosine"], M.cosine(r, c))
    _same(got["rel_l2"], M.rel_l2(r, c))
    _same(got["max_abs"], M.max_abs(r, c))
    _same(got["sqnr_db"], M.sqnr_db(r, c))
    _same(got["ref_norm"], M.row_norm(r))
    _same(got["cand_norm"], M.row_norm(c))
    _same(got["ref_nonfinite"], M.nonfinite_count(r))
    _same(got["cand_nonfinite"], M.nonfinite_count(c))
    for lo, hi in ((0, 5), (5, 37)):  # a slice of stacked rows = the metrics of that point alone
        part = M.point_metrics(r[lo:hi], c[lo:hi])
        for k, v in part.items():
            _same(v, got[k][lo:hi])


def test_logit_metrics_equal_the_single_metrics_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(21, 5000, generator=g) * 4
    c = r + 0.05 * torch.randn(21, 5000, generator=g)
    r[3, 10], c[4, 7], r[5, :] = math.nan, math.inf, -math.inf
    c[6, 2] = -math.inf
    got = M.logit_metrics(r, c, 5)
    _same(got["kl"], M.kl_divergence(r, c))
    _same(got["top1"], M.top1_agreement(r, c))
    _same(got["topk"], M.topk_overlap(r, c, 5))
    _same(got["ref_argmax"], torch.nan_to_num(r.double(), nan=-math.inf).argmax(dim=-1))
    _same(got["cand_argmax"], torch.nan_to_num(c.double(), nan=-math.inf).argmax(dim=-1))
