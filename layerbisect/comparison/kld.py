"""KL divergence and token-probability statistics in the units of ``llama-perplexity --kl-divergence``.

Primary source: llama.cpp ``tools/perplexity/perplexity.cpp`` (``kl_divergence``,
``log_softmax``, ``mean_and_uncertainty``, ``covariance``, ``percentile``). Users who have run
``llama-perplexity --kl-divergence-base`` / ``--kl-divergence`` know these numbers; the same
definitions, names and printed layout are used here, per position of our teacher-forced
sequence (reference = llama.cpp's "base", candidate = "Q"):

- each scored position i predicts the *next* token t = ids[i+1] (the last position has none
  and is not scored, as in llama.cpp, where the scored tokens are each chunk's second half);
- ``KLD_i = Σ_v p_base(v)·(log p_base(v) − log q(v))`` in nats (natural log);
- ``Same top p``: share of positions where argmax q = argmax p_base, ± sqrt(p(1−p)/(n−1));
- ``Δp_i = q(t) − p_base(t)``, shown in percent; ``RMS Δp`` = sqrt(mean Δp²), its uncertainty
  0.5/RMS · unc(mean Δp²);
- ``NLL_i = −log q(t)``; PPL = exp(mean NLL), ± PPL·unc; Cor, ln(PPL(Q)/PPL(base)) and the
  ratio/difference with llama.cpp's covariance formula;
- ``mean_and_uncertainty(sum, sum2, n)``: mean, and sqrt((sum2/n − mean²)/(n−1)) when that
  variance is positive and n > 10, else 0;
- percentiles as llama.cpp's lambda: sorted values, p = f·(n−1), linear interpolation between
  the neighbours; the median is the mean of the two middle values for even n.

Differences, by design: llama.cpp stores the base log-probabilities in 16 bits (scale and
minimum per row) and skips vocabulary terms with log p_base ≤ −16 in the KLD sum; we use the
reference's FP32 logits in float64 and every term (each skipped term has p < 1.2e-7; a port of
llama.cpp's arithmetic agrees to 0.2%: ``tests/comparison/test_kld.py``). llama.cpp refuses
statistics on fewer than 100 tokens; we print them for any count (the uncertainty is 0 up to
10, as in llama.cpp) and say how many positions there are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .sections import Section

KLD_PERCENTILES: tuple[tuple[str, float], ...] = (
    ("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900), ("Median", 0.5),
    ("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010), (" 0.1%", 0.001),
)
DP_PERCENTILES: tuple[tuple[str, float], ...] = (
    ("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900), ("75.0%", 0.750), ("Median", 0.5),
    ("25.0%", 0.250), ("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010), (" 0.1%", 0.001),
)


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """llama.cpp's ``mean_and_uncertainty``: (mean, standard error), the error 0 for count ≤ 10."""
    if count < 1:
        return 0.0, 0.0
    f = total / count
    df = total2 / count - f * f
    df = math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0
    return f, df


def covariance(suma: float, sumb: float, sumab: float, count: int) -> float:
    """llama.cpp's ``covariance`` of the two means (0 below 10 values)."""
    if count < 10:
        return 0.0
    return (sumab / count - (suma / count) * (sumb / count)) / (count - 1)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """llama.cpp's ``percentile`` lambda on ascending values."""
    v = sorted_values
    if fraction <= 0:
        return v[0]
    if fraction >= 1:
        return v[-1]
    p = fraction * (len(v) - 1)
    ip = int(p)
    p -= ip
    return (1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)]


def median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    return 0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1]) if n % 2 == 0 else sorted_values[n // 2]


@dataclass(frozen=True)
class KLDStats:
    """What ``llama-perplexity --kl-divergence`` prints, over ``count`` scored positions (see module notes)."""

    count: int
    ppl_q: float
    ppl_q_unc: float
    ppl_base: float
    ppl_base_unc: float
    cor_ln_ppl: float
    ln_ppl_ratio: float
    ln_ppl_ratio_unc: float
    ppl_ratio: float
    ppl_ratio_unc: float
    ppl_diff: float
    ppl_diff_unc: float
    mean_kld: float
    mean_kld_unc: float
    kld_percentiles: dict[str, float]  # "Maximum", "99.9%", …, "Median", …, "Minimum"
    mean_dp: float  # fractions (printed ×100 as %)
    mean_dp_unc: float
    dp_percentiles: dict[str, float]
    rms_dp: float
    rms_dp_unc: float
    same_top_p: float
    same_top_p_unc: float

    @property
    def max_kld(self) -> float:
        return self.kld_percentiles["Maximum"]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The three blocks of llama.cpp's final output, with its labels and formats."""
        k, d = self.kld_percentiles, self.dp_percentiles
        out = [
            "====== Perplexity statistics ======",
            f"Mean PPL(Q)                   : {self.ppl_q:10.6f} ± {self.ppl_q_unc:10.6f}",
            f"Mean PPL(base)                : {self.ppl_base:10.6f} ± {self.ppl_base_unc:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {100.0 * self.cor_ln_ppl:6.2f}%",
            f"Mean ln(PPL(Q)/PPL(base))     : {self.ln_ppl_ratio:10.6f} ± {self.ln_ppl_ratio_unc:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {self.ppl_ratio:10.6f} ± {self.ppl_ratio_unc:10.6f}",
            f"Mean PPL(Q)-PPL(base)         : {self.ppl_diff:10.6f} ± {self.ppl_diff_unc:10.6f}",
            "",
            "====== KL divergence statistics ======",
            f"Mean    KLD: {self.mean_kld:10.6f} ± {self.mean_kld_unc:10.6f}",
            f"Maximum KLD: {k['Maximum']:10.6f}",
        ]
        out += [f"{name:<7} KLD: {k[name]:10.6f}" for name, _ in KLD_PERCENTILES]
        out += [f"Minimum KLD: {k['Minimum']:10.6f}", "", "====== Token probability statistics ======",
                f"Mean    Δp: {100.0 * self.mean_dp:6.3f} ± {100.0 * self.mean_dp_unc:5.3f} %",
                f"Maximum Δp: {100.0 * d['Maximum']:6.3f}%"]
        out += [f"{name:<7} Δp: {100.0 * d[name]:6.3f}%" for name, _ in DP_PERCENTILES]
        out += [f"Minimum Δp: {100.0 * d['Minimum']:6.3f}%",
                f"RMS Δp    : {100.0 * self.rms_dp:6.3f} ± {100.0 * self.rms_dp_unc:5.3f} %",
                f"Same top p: {100.0 * self.same_top_p:6.3f} ± {100.0 * self.same_top_p_unc:5.3f} %"]
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def sections(self) -> tuple[Section, ...]:
        """llama.cpp's printed lines, as a text section of every report output."""
        return (Section.of_text(
            "kl-divergence",
            f"KL divergence ({self.count} scored positions; llama-perplexity --kl-divergence units)",
            self.text(),
            "reference = llama.cpp's base, candidate = Q; each position scores the next token of the "
            "teacher-forced sequence (docs/METRICS.md). The logit finding's mean KL averages every position; "
            "this one leaves out the last, which predicts no token, so the two means differ.",
        ),)


def per_position(
    ref_logits: torch.Tensor, cand_logits: torch.Tensor, next_ids: Sequence[int], *, rows: int = 4
) -> dict[str, torch.Tensor]:
    """Per scored position (rows of the (T, V) logits, ``next_ids[i]`` the token that follows row i):
    ``kld``, ``dp`` (q(t) − p_base(t)), ``nll`` (−log q(t)), ``nll_base``, ``same_top`` (bool), float64.

    Works on ``rows`` rows at a time in float64, so a 262k-token vocabulary needs tens of MB, not GB.
    """
    t_all = torch.tensor(list(next_ids), dtype=torch.long)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("kld", "dp", "nll", "nll_base", "same_top")}
    for a in range(0, int(ref_logits.shape[0]), rows):
        r = ref_logits[a : a + rows].detach().to("cpu", torch.float64)
        c = cand_logits[a : a + rows].detach().to("cpu", torch.float64)
        lp, lq = torch.log_softmax(r, dim=-1), torch.log_softmax(c, dim=-1)
        p = lp.exp()
        terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
        t = t_all[a : a + rows].reshape(-1, 1)
        nll, nll_base = -lq.gather(1, t).squeeze(1), -lp.gather(1, t).squeeze(1)
        parts["kld"].append(terms.sum(dim=-1))
        parts["dp"].append(torch.exp(-nll) - torch.exp(-nll_base))
        parts["nll"].append(nll)
        parts["nll_base"].append(nll_base)
        parts["same_top"].append(r.argmax(dim=-1) == c.argmax(dim=-1))
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}


def _exp(x: float) -> float:
    """exp that saturates to inf (a candidate whose logits blew up has a mean NLL in the thousands)."""
    return math.exp(x) if x < 709.0 else math.inf


def kld_stats(ref_logits: torch.Tensor, cand_logits: torch.Tensor, token_ids: Sequence[int]) -> KLDStats | None:
    """llama.cpp's statistics over the rows of (T, V) logits that have a next token in ``token_ids`` (the ids the
    rows were run on: rows 0..T−2 when there are T).

    Returns None when fewer than two positions exist or a row is not finite (the comparator's
    own NaN handling reports those).
    """
    n = min(int(ref_logits.shape[0]), int(cand_logits.shape[0]), len(token_ids) - 1)  # rows with a next token
    if n < 1:
        return None
    r, c = ref_logits[:n], cand_logits[:n]
    if not (bool(torch.isfinite(r).all()) and bool(torch.isfinite(c).all())):
        return None
    pp = per_position(r, c, list(token_ids[1 : n + 1]))
    kld, dp, nll, nllb = (pp[k].tolist() for k in ("kld", "dp", "nll", "nll_base"))
    same = int(pp["same_top"].sum())

    def s(xs: list[float]) -> tuple[float, float]:
        return sum(xs), sum(x * x for x in xs)

    lq, lq_unc = mean_and_uncertainty(*s(nll), n)
    lb, lb_unc = mean_and_uncertainty(*s(nllb), n)
    cov = covariance(sum(nll), sum(nllb), sum(a * b for a, b in zip(nll, nllb, strict=True)), n)
    cor = cov / (lq_unc * lb_unc) if lq_unc > 0 and lb_unc > 0 else math.nan
    ratio_unc = math.sqrt(max(lq_unc**2 + lb_unc**2 - 2.0 * cov, 0.0))
    ppl_q, ppl_b = _exp(lq), _exp(lb)
    ppl_q_unc, ppl_b_unc = ppl_q * lq_unc, ppl_b * lb_unc
    ratio = _exp(lq - lb)
    ppl_cov = ppl_q * ppl_b * cov
    diff_unc = math.sqrt(max(ppl_q_unc**2 + ppl_b_unc**2 - 2.0 * ppl_cov, 0.0))

    mk, mk_unc = mean_and_uncertainty(*s(kld), n)
    ks = sorted(kld)
    kp = {"Maximum": ks[-1], **{name: (median(ks) if f == 0.5 else percentile(ks, f)) for name, f in KLD_PERCENTILES},
          "Minimum": ks[0]}
    md, md_unc = mean_and_uncertainty(*s(dp), n)
    ds = sorted(dp)
    dpp = {"Maximum": ds[-1], **{name: (median(ds) if f == 0.5 else percentile(ds, f)) for name, f in DP_PERCENTILES},
           "Minimum": ds[0]}
    dp2 = [x * x for x in dp]
    mse, mse_unc = mean_and_uncertainty(sum(dp2), sum(x * x for x in dp2), n)
    rms = math.sqrt(mse)
    rms_unc = 0.5 / rms * mse_unc if rms > 0 else 0.0
    top = same / n
    top_unc = math.sqrt(top * (1.0 - top) / (n - 1)) if n > 1 else 0.0
    return KLDStats(
        count=n, ppl_q=ppl_q, ppl_q_unc=ppl_q_unc, ppl_base=ppl_b, ppl_base_unc=ppl_b_unc, cor_ln_ppl=cor,
        ln_ppl_ratio=lq - lb, ln_ppl_ratio_unc=ratio_unc, ppl_ratio=ratio, ppl_ratio_unc=ratio * ratio_unc,
        ppl_diff=ppl_q - ppl_b, ppl_diff_unc=diff_unc, mean_kld=mk, mean_kld_unc=mk_unc, kld_percentiles=kp,
        mean_dp=md, mean_dp_unc=md_unc, dp_percentiles=dpp, rms_dp=rms, rms_dp_unc=rms_unc,
        same_top_p=top, same_top_p_unc=top_unc,
    )


__all__ = ["KLDStats", "covariance", "kld_stats", "mean_and_uncertainty", "per_position",
           "percentile"]
