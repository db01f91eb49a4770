"""llama-perplexity --kl-divergence statistics: definitions, printed names, and a port of llama.cpp's own arithmetic.

The port (``_llamacpp``) transcribes perplexity.cpp line by line: base log-probs stored as uint16 with a
per-row scale and minimum (``process_logits`` for --kl-divergence-base), float32 accumulation per row as in
``log_softmax(n_vocab, logits, base_log_prob, tok, kld)``, terms with log p_base ≤ −16 skipped. Our float64
statistics must agree with it to the precision that storage allows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from layerbisect.comparison.kld import (
    KLDStats,
    kld_stats,
    mean_and_uncertainty,
    median,
    per_position,
    percentile,
)

SEED = 7


def _logits(n: int, vocab: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * scale


def _llamacpp(ref: np.ndarray, cand: np.ndarray, tokens: list[int]) -> dict[str, list[float]]:
    """perplexity.cpp: the per-position KLD, Δp and same-top of each row i (next token tokens[i+1])."""
    out: dict[str, list[float]] = {"kld": [], "dp": [], "same": []}
    for i in range(len(tokens) - 1):
        # --kl-divergence-base: log-probs of the base model, row-quantized to uint16
        base = ref[i].astype(np.float32)
        max_logit, min_logit = base.max(), base.min()
        sum_exp = np.float64(np.exp((base - max_logit).astype(np.float32)).astype(np.float64).sum())
        log_sum_exp = np.float32(math.log(sum_exp))
        min_log_prob = np.float32(min_logit - max_logit - log_sum_exp)
        scale = np.float32((max_logit - min_logit) / np.float32(65535.0))
        q16 = np.where(base > min_logit, np.rint((base - min_logit) / scale), 0).astype(np.uint16)
        # --kl-divergence: the candidate's logits against those stored log-probs
        lg = cand[i].astype(np.float32)
        imax = int(lg.argmax())
        mx = lg.max()
        lse = np.float32(math.log(np.exp((lg - mx).astype(np.float32)).astype(np.float64).sum()))
        tok = tokens[i + 1]
        nll = np.float32(mx + lse - lg[tok])
        nll_base = -(scale * np.float32(q16[tok]) + min_log_prob)
        p_log_base = scale * q16.astype(np.float32) + min_log_prob
        imax_base = int(p_log_base.argmax())
        keep = p_log_base > -16.0
        s = np.sum(np.exp(p_log_base[keep]).astype(np.float64) * (p_log_base[keep] - lg[keep] + (mx + lse)))
        out["kld"].append(float(s))
        out["dp"].append(float(np.exp(-nll) - np.exp(-nll_base)))
        out["same"].append(float(imax == imax_base))
    return out


def test_identical_logits_give_zero() -> None:
    x = _logits(40, 50, 3.0, SEED)
    s = kld_stats(x, x.clone(), list(range(41)))
    assert s is not None and s.count == 40  # every row has a next token here (41 ids)
    assert s.mean_kld == 0 and s.max_kld == 0 and s.same_top_p == 1 and s.rms_dp == 0 and s.ppl_ratio == 1


def test_kld_of_a_known_pair() -> None:
    """Two tokens, p = (0.75, 0.25), q = (0.5, 0.5): KL = 0.75 ln 1.5 + 0.25 ln 0.5; next token 0: Δp = −0.25."""
    p = torch.log(torch.tensor([[0.75, 0.25]] * 12, dtype=torch.float64))
    q = torch.zeros(12, 2, dtype=torch.float64)
    s = kld_stats(p, q, [0] * 13)
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert s is not None and s.count == 12
    assert abs(s.mean_kld - want) < 1e-12 and s.mean_kld_unc < 1e-8  # sum2/n − mean²: cancellation only
    assert abs(s.mean_dp - (-0.25)) < 1e-12 and abs(s.rms_dp - 0.25) < 1e-12  # q(1) − p(1) = 0.5 − 0.75
    assert s.same_top_p == 1.0  # q's tie resolves to index 0, p's argmax
    pp = per_position(p, q, [0] * 12)
    assert torch.allclose(pp["nll"], torch.full((12,), math.log(2.0), dtype=torch.float64))


def test_helpers_follow_llamacpp() -> None:
    v = sorted(np.random.default_rng(SEED).standard_normal(101).tolist())
    for f in (0.001, 0.01, 0.05, 0.1, 0.9, 0.95, 0.99, 0.999):
        assert percentile(v, f) == pytest.approx(float(np.percentile(v, 100 * f, method="linear")), abs=1e-12)
    assert median(v) == v[50] and median(v[:100]) == 0.5 * (v[49] + v[50])
    xs = np.random.default_rng(SEED).standard_normal(50)
    m, u = mean_and_uncertainty(float(xs.sum()), float((xs**2).sum()), 50)
    assert m == pytest.approx(xs.mean()) and u == pytest.approx(xs.std() / math.sqrt(49))
    assert mean_and_uncertainty(1.0, 1.0, 10)[1] == 0.0  # llama.cpp: no uncertainty for count <= 10


def test_statistics_match_a_port_of_perplexity_cpp() -> None:
    n, vocab = 300, 2000
    ref = _logits(n + 1, vocab, 4.0, SEED)
    cand = ref + _logits(n + 1, vocab, 0.5, SEED + 1)
    tokens = torch.randint(0, vocab, (n + 1,), generator=torch.Generator().manual_seed(SEED)).tolist()
    ours = kld_stats(ref, cand, tokens)
    theirs = _llamacpp(ref.numpy(), cand.numpy(), tokens)
    assert ours is not None and ours.count == n
    k = sorted(theirs["kld"])
    assert ours.mean_kld == pytest.approx(float(np.mean(k)), rel=2e-3)
    assert ours.max_kld == pytest.approx(k[-1], rel=2e-3)
    assert ours.kld_percentiles["99.0%"] == pytest.approx(percentile(k, 0.99), rel=2e-3)
    assert ours.kld_percentiles["Median"] == pytest.approx(median(k), rel=5e-3)
    assert ours.mean_dp == pytest.approx(float(np.mean(theirs["dp"])), abs=2e-4)
    assert ours.same_top_p == pytest.approx(float(np.mean(theirs["same"])))
    m, u = mean_and_uncertainty(sum(theirs["kld"]), sum(x * x for x in theirs["kld"]), n)
    assert ours.mean_kld_unc == pytest.approx(u, rel=5e-3)


def test_printed_lines_carry_llamacpps_labels() -> None:
    ref = _logits(30, 100, 2.0, SEED)
    s = kld_stats(ref, ref + _logits(30, 100, 0.3, SEED + 2), list(range(30)))
    assert isinstance(s, KLDStats)
    text = s.text()
    for label in ("====== Perplexity statistics ======", "Mean PPL(Q)                   :",
                  "Cor(ln(PPL(Q)), ln(PPL(base))):", "Mean ln(PPL(Q)/PPL(base))     :",
                  "====== KL divergence statistics ======", "Mean    KLD:", "Maximum KLD:", "99.9%   KLD:",
                  "99.0%   KLD:", "Median  KLD:", " 5.0%   KLD:", " 0.1%   KLD:", "Minimum KLD:",
                  "====== Token probability statistics ======", "Mean    Δp:", "75.0%   Δp:", "25.0%   Δp:",
                  "RMS Δp    :", "Same top p:"):
        assert label in text, label
    assert f"Same top p: {100 * s.same_top_p:6.3f} ± " in text


def test_nonfinite_or_too_short_gives_none() -> None:
    x = _logits(5, 10, 1.0, SEED)
    y = x.clone()
    y[2, 3] = float("nan")
    assert kld_stats(x, y, list(range(5))) is None
    assert kld_stats(x[:1], x[:1], [0]) is None
