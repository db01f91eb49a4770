"""Comparison metrics: small pure functions on (T, F) tensors, one value per token row.

Design notes
- Every function takes the reference first, the candidate second, both (T, F), and returns
  a float64 (T,) tensor (or an int64 count / bool). Aggregation over tokens happens in the
  result objects (``results.py``), never here.
- Inputs are cast up to float64 *before* subtracting: FP32 activations of 1e4 that differ in
  the 7th digit would otherwise cancel to 0, and squares of FP32 values near 3e38 overflow.
- Non-finite values are handled explicitly, the same way everywhere (docs/METRICS.md):
  a row with a NaN or ±Inf on either side gives NaN for the *difference* metrics (cosine,
  rel_l2, max_abs, sqnr_db, KL) because no meaningful number exists; the NaN/Inf counts say
  why. Norms propagate (a row with +Inf has norm +Inf), so the norm ratio still shows a
  blow-up that has reached Inf.
- Zero vectors are defined, not left to 0/0: two zero rows are identical (cosine 1,
  rel_l2 0, norm ratio 1, SQNR +inf); a zero reference with a non-zero candidate has
  cosine 0, rel_l2 +inf, norm ratio +inf, SQNR -inf.
"""

from __future__ import annotations

import math

import torch

SATURATION_FRACTION = 0.99
"""A value counts as saturated when |cap·tanh(x/cap)| ≥ 0.99·cap, i.e. |x| ≥ cap·atanh(0.99) ≈ 2.647·cap."""


def _f64(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.dim() == 1:
        x = x.unsqueeze(0)
    return x.to(dtype=torch.float64)  # where x is: a GPU computes the same formulas (localization, on its device)


def _pair(ref: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r, c = _f64(ref), _f64(cand)
    if r.shape != c.shape:
        raise ValueError(f"shape mismatch: reference {tuple(r.shape)} vs candidate {tuple(c.shape)}")
    return r, c


def _row_finite(*xs: torch.Tensor) -> torch.Tensor:
    ok = torch.ones(xs[0].shape[0], dtype=torch.bool, device=xs[0].device)
    for x in xs:
        ok &= torch.isfinite(x).all(dim=-1)
    return ok


def _nan_where(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, values, torch.full_like(values, math.nan))


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per row in float64; NaN if the row holds a NaN, +Inf if it holds an Inf."""
    x = _f64(x)
    n = x.norm(dim=-1)
    # torch's norm of a row with ±inf and NaN is NaN; with only ±inf it is inf: that is what we want.
    return n


def nan_count(x: torch.Tensor) -> torch.Tensor:
    return torch.isnan(_f64(x)).sum(dim=-1)


def inf_count(x: torch.Tensor) -> torch.Tensor:
    return torch.isinf(_f64(x)).sum(dim=-1)


def nonfinite_count(x: torch.Tensor) -> torch.Tensor:
    """NaN plus ±Inf values per row (int64)."""
    return (~torch.isfinite(_f64(x))).sum(dim=-1)


def cosine(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """cos = <r, c> / (‖r‖·‖c‖) per row. Both zero → 1; one zero → 0; non-finite → NaN."""
    r, c = _pair(ref, cand)
    nr, nc = r.norm(dim=-1), c.norm(dim=-1)
    denom = nr * nc
    dot = (r * c).sum(dim=-1)
    cos = torch.where(denom > 0, dot / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(dot))
    both_zero = (nr == 0) & (nc == 0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)
    # Rounding can push |cos| a hair past 1.
    cos = cos.clamp(-1.0, 1.0)
    return _nan_where(cos, _row_finite(r, c))


def rel_l2(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """‖c − r‖ / ‖r‖ per row. ‖r‖ = 0: 0 if c is also zero, else +inf. Non-finite → NaN."""
    r, c = _pair(ref, cand)
    err = (c - r).norm(dim=-1)
    nr = r.norm(dim=-1)
    safe = torch.where(nr > 0, nr, torch.ones_like(nr))
    out = torch.where(nr > 0, err / safe, torch.where(err > 0, math.inf, 0.0))
    return _nan_where(out, _row_finite(r, c))


def norm_ratio(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """‖c‖ / ‖r‖ per row (blow-up > 1, collapse < 1). Both zero → 1; ‖r‖ = 0 → +inf.

    Not NaN-masked on Inf: a candidate row that reached +Inf has ratio +Inf. NaN anywhere → NaN.
    """
    r, c = _pair(ref, cand)
    return norm_ratio_from_norms(r.norm(dim=-1), c.norm(dim=-1))


def norm_ratio_from_norms(ref_norm: torch.Tensor, cand_norm: torch.Tensor) -> torch.Tensor:
    """The norm ratio from precomputed per-row norms (used with summary-only captures)."""
    nr, nc = ref_norm.to(torch.float64), cand_norm.to(torch.float64)
    safe = torch.where(nr > 0, nr, torch.ones_like(nr))
    out = torch.where(nr > 0, nc / safe, torch.where(nc > 0, math.inf, 1.0))
    out = torch.where(torch.isinf(nr) & torch.isinf(nc), torch.full_like(out, math.nan), out)
    return torch.where(torch.isnan(nr) | torch.isnan(nc), torch.full_like(out, math.nan), out)


def max_abs(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """max |c − r| per row. Non-finite → NaN; an empty row → 0."""
    r, c = _pair(ref, cand)
    if r.shape[-1] == 0:
        return torch.zeros(r.shape[0], dtype=torch.float64, device=r.device)
    return _nan_where((c - r).abs().amax(dim=-1), _row_finite(r, c))


def sqnr_db(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """10·log10(‖r‖² / ‖c − r‖²) per row. No error → +inf; zero signal with error → -inf."""
    r, c = _pair(ref, cand)
    sig = (r * r).sum(dim=-1)
    noise = ((c - r) ** 2).sum(dim=-1)
    return _nan_where(_sqnr(sig, noise), _row_finite(r, c))


def _sqnr(sig: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    # no boolean indexing: on a GPU it would wait for the device at every point
    db = 10.0 * torch.log10(sig / torch.where(noise > 0, noise, torch.ones_like(noise)))
    return torch.where(noise == 0, math.inf, torch.where(sig == 0, -math.inf, db))


# --------------------------------------------------------------------------- all at once

POINT_METRICS = ("cosine", "rel_l2", "max_abs", "sqnr_db", "ref_norm", "cand_norm", "ref_nonfinite", "cand_nonfinite")
F64_CHUNK = 1 << 21  # float64 elements per operand of one step of ``point_metrics``: 16 MB, whatever the width


def point_metrics(ref: torch.Tensor, cand: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every per-row metric of the comparison at once: ``POINT_METRICS`` → (N,) tensor.

    The same values as ``cosine``, ``rel_l2``, ``max_abs``, ``sqnr_db``, ``row_norm`` and
    ``nonfinite_count`` called one by one (the same float64 operations on each row; tested
    bit for bit), from one float64 copy of each side instead of one per function, a block of
    rows at a time (``F64_CHUNK``): a (14, 262144) logits row block never exists in float64 whole.
    Rows are independent, so a caller may stack the rows of many points of one width.
    """
    r_all, c_all = ref.detach(), cand.detach()
    if r_all.dim() == 1:
        r_all, c_all = r_all.unsqueeze(0), c_all.unsqueeze(0)
    if r_all.shape != c_all.shape:
        raise ValueError(f"shape mismatch: reference {tuple(r_all.shape)} vs candidate {tuple(c_all.shape)}")
    n, width = r_all.shape[0], r_all.shape[-1]
    step = max(1, F64_CHUNK // max(width, 1))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in POINT_METRICS}
    for a in range(0, n, step):
        for k, v in _point_metrics_rows(r_all[a : a + step], c_all[a : a + step]).items():
            parts[k].append(v)
    if not n:
        return {k: torch.zeros(0, dtype=torch.int64 if k.endswith("nonfinite") else torch.float64,
                               device=r_all.device) for k in POINT_METRICS}
    return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in parts.items()}


def _point_metrics_rows(ref: torch.Tensor, cand: torch.Tensor) -> dict[str, torch.Tensor]:
    # no boolean indexing: on a GPU it would wait for the device at every block
    r, c = _pair(ref, cand)
    rnf, cnf = (~torch.isfinite(r)).sum(dim=-1), (~torch.isfinite(c)).sum(dim=-1)
    ok = (rnf == 0) & (cnf == 0)  # _row_finite(r, c)
    nr, nc = r.norm(dim=-1), c.norm(dim=-1)
    denom = nr * nc  # cosine
    dot = (r * c).sum(dim=-1)
    cos = torch.where(denom > 0, dot / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(dot))
    cos = torch.where((nr == 0) & (nc == 0), torch.ones_like(cos), cos).clamp(-1.0, 1.0)
    d = c - r  # rel_l2, max_abs, sqnr_db: one difference
    err = d.norm(dim=-1)
    safe = torch.where(nr > 0, nr, torch.ones_like(nr))
    rel = torch.where(nr > 0, err / safe, torch.where(err > 0, math.inf, 0.0))
    if r.shape[-1] == 0:  # max_abs of an empty row: 0, as max_abs gives
        mx = torch.zeros(r.shape[0], dtype=torch.float64, device=r.device)
    else:
        mx = _nan_where(d.abs().amax(dim=-1), ok)
    sq = _sqnr((r * r).sum(dim=-1), (d**2).sum(dim=-1))
    del d
    return {"cosine": _nan_where(cos, ok), "rel_l2": _nan_where(rel, ok), "max_abs": mx, "sqnr_db": _nan_where(sq, ok),
            "ref_norm": nr, "cand_norm": nc, "ref_nonfinite": rnf, "cand_nonfinite": cnf}


def logit_metrics(ref_logits: torch.Tensor, cand_logits: torch.Tensor, k: int = 5) -> dict[str, torch.Tensor]:
    """``kl`` (``kl_divergence``), ``top1`` (``top1_agreement``), ``topk`` (``topk_overlap``) and the NaN-safe
    argmax of each side (``ref_argmax``/``cand_argmax``: NaN counts as -inf), from one float64 copy per
    ``LOGIT_ROWS`` rows instead of one per function: the same values (tested bit for bit)."""

    def rows(r32: torch.Tensor, c32: torch.Tensor) -> torch.Tensor:
        r, c = _pair(r32, c32)
        out = [_kl_rows(r, c), _top1_rows(r, c).to(torch.float64), _topk_rows(r, c, k),
               torch.nan_to_num(r, nan=-math.inf).argmax(dim=-1).to(torch.float64),
               torch.nan_to_num(c, nan=-math.inf).argmax(dim=-1).to(torch.float64)]
        return torch.stack(out, dim=-1)  # (rows, 5): argmax ids < 2**53 are exact in float64

    got = _by_rows(rows, ref_logits, cand_logits)
    return {"kl": got[:, 0].contiguous(), "top1": got[:, 1] > 0, "topk": got[:, 2].contiguous(),
            "ref_argmax": got[:, 3].to(torch.int64), "cand_argmax": got[:, 4].to(torch.int64)}


# --------------------------------------------------------------------------- logits


LOGIT_ROWS = 4  # logits are compared this many positions at a time: ~10 float64 (rows, 262144) temporaries each


def _by_rows(fn, ref: torch.Tensor, cand: torch.Tensor, *args) -> torch.Tensor:  # noqa: ANN001
    """``fn`` over row chunks of (T, V) logits, concatenated: each row's value depends on that row only."""
    r, c = ref.detach(), cand.detach()
    if r.dim() == 1:
        r, c = r.unsqueeze(0), c.unsqueeze(0)
    if r.shape != c.shape:
        raise ValueError(f"shape mismatch: reference {tuple(r.shape)} vs candidate {tuple(c.shape)}")
    if r.shape[0] <= LOGIT_ROWS:
        return fn(r, c, *args)
    n = LOGIT_ROWS
    return torch.cat([fn(r[a : a + n], c[a : a + n], *args) for a in range(0, r.shape[0], n)])


def _logit_rows_ok(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # -inf is a legitimate logit (masked vocabulary entry); NaN and +inf are not.
    bad = torch.isnan(r) | torch.isnan(c) | (r == math.inf) | (c == math.inf)
    return ~bad.any(dim=-1) & ~(r == -math.inf).all(dim=-1) & ~(c == -math.inf).all(dim=-1)


def kl_divergence(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_ref ‖ P_cand) in nats per position, from logits via float64 log-softmax.

    Terms with P_ref = 0 contribute 0; P_ref > 0 with P_cand = 0 gives +inf. Rows with NaN or
    +inf logits on either side give NaN. Tiny negative values from rounding are clamped to 0.
    """
    return _by_rows(_kl_rows, ref_logits, cand_logits)


def _kl_rows(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    r, c = _pair(ref_logits, cand_logits)
    ok = _logit_rows_ok(r, c)
    r = torch.where(ok[:, None], r, torch.zeros_like(r))
    c = torch.where(ok[:, None], c, torch.zeros_like(c))
    lp, lq = torch.log_softmax(r, dim=-1), torch.log_softmax(c, dim=-1)
    p = lp.exp()
    diff = torch.where(p > 0, lp - lq, torch.zeros_like(lp))
    terms = torch.where(p > 0, p * diff, torch.zeros_like(p))
    kl = terms.sum(dim=-1).clamp_min(0.0)
    return _nan_where(kl, ok)


def top1_agreement(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """Per position: does the candidate's argmax equal the reference's? NaN/+inf rows → False."""
    return _by_rows(_top1_rows, ref_logits, cand_logits)


def _top1_rows(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    r, c = _pair(ref_logits, cand_logits)
    ok = _logit_rows_ok(r, c)
    return (r.argmax(dim=-1) == c.argmax(dim=-1)) & ok


def topk_overlap(ref_logits: torch.Tensor, cand_logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Per position: |top-k(ref) ∩ top-k(cand)| / k (k capped at the vocabulary size). Bad rows → 0."""
    return _by_rows(_topk_rows, ref_logits, cand_logits, k)


def _topk_rows(ref_logits: torch.Tensor, cand_logits: torch.Tensor, k: int) -> torch.Tensor:
    r, c = _pair(ref_logits, cand_logits)
    k = max(1, min(k, r.shape[-1]))
    ok = _logit_rows_ok(r, c)
    tr = r.topk(k, dim=-1).indices
    tc = c.topk(k, dim=-1).indices
    hits = (tr[:, :, None] == tc[:, None, :]).any(dim=-1).sum(dim=-1).to(torch.float64) / k
    return torch.where(ok, hits, torch.zeros_like(hits))


# --------------------------------------------------------------------------- softcap


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(_f64(x) / cap)


def saturation_share(x: torch.Tensor, cap: float, *, pre_softcap: bool = True) -> torch.Tensor:
    """Share of finite values per row at the softcap wall: |cap·tanh(x/cap)| ≥ 0.99·cap.

    ``pre_softcap``: x is before the cap (the tanh is applied here); otherwise x is already
    capped. Non-finite values are left out of numerator and denominator (masked attention
    scores are -inf on both sides); a row with no finite value → NaN.
    """
    if cap is None or cap <= 0:
        raise ValueError(f"softcap must be positive, got {cap!r}")
    x = _f64(x)
    fin = torch.isfinite(x)
    y = softcap(torch.where(fin, x, torch.zeros_like(x)), cap) if pre_softcap else x
    sat = (y.abs() >= SATURATION_FRACTION * cap) & fin
    n = fin.sum(dim=-1)
    share = sat.sum(dim=-1).to(torch.float64) / n.clamp_min(1)
    return torch.where(n > 0, share, torch.full_like(share, math.nan))


def max_abs_value(x: torch.Tensor) -> torch.Tensor:
    """Largest finite |x| per row (0 for a row with no finite value)."""
    x = _f64(x)
    if x.shape[-1] == 0:
        return torch.zeros(x.shape[0], dtype=torch.float64)
    fin = torch.isfinite(x)
    return torch.where(fin, x.abs(), torch.zeros_like(x)).amax(dim=-1)
