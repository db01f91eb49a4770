"""Fault signatures: how a candidate tensor that went wrong relates to the reference's, named by what went wrong.

Design notes
- Each signature is a pure function of the two tensors (the reference's, FP32 in the graph's
  layout; the candidate's, dequantized the way the runs use it) and a little context (heads,
  the stored scales, the model's embedding scale). It returns a ``Signature`` (cause, a
  sentence, evidence numbers) or None. ``audit/weights.py`` tries them where they apply;
  the first that explains the tensor names its cause.
- The signatures (each from a public report; docs/FAULTS.md names them):
    permutation        rows (or columns) in another order: nearest-neighbour matching of
                       L2-normalized rows, then the structure of the permutation is named —
                       halves swapped within each head, heads reordered, interleaved vs NEOX
                       rope order (llama.cpp's Q/K permute), or a general shuffle;
    norm_convention    a norm gain off by the (1 + w) convention: cand = ref + 1 (applied
                       twice), ref − 1 (not at all), or 1 + (ref − 1)/s (the producer folded a
                       scale s as 1 + w/s instead of (1 + w)/s; llm-compressor issue 2500);
    embed_scale        the embedding off by exactly √d (the normalizer missing or doubled);
    raw_codes          a quantized weight that matches the reference only once the producer's
                       own scales (derived from the reference: amax/448 per block) are applied:
                       the stored scales were dropped or set to 1 (raw FP8 codes as weights);
    pow2_scales        FP8 scales that are all exact powers of two while the reference's amax
                       gives other values, and the per-block α matches stored/derived: scales
                       rounded up without requantizing the weights (transformers issue 47030);
    exponent_offset    an MXFP4 weight off by an exact power of two (an E8M0 offset applied
                       twice: ×¼ for the element offset, vLLM issue 35562);
    sibling_scale      a linear of a fused group (q/k/v, gate/up) whose α equals the ratio of
                       its own stored scale to a sibling's: dequantized with the sibling's
                       scale (vLLM issue 54974).
- Thresholds: a permutation must restore the cosine to ``RESTORED`` and be a bijection;
  offsets and ratios must fit to 2 %; noise (FP4: cosine ≈ 0.99, FP8: 0.9995) stays far inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

RESTORED = 0.9  # a hypothesis that lifts the cosine above this explains a low-cosine tensor
FIT_TOL = 0.02  # relative tolerance of offsets / ratios
MATCH_COS = 0.5  # a row matched by nearest neighbour must at least reach this cosine


@dataclass(frozen=True)
class Signature:
    cause: str
    note: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().flatten(), b.double().flatten()
    na, nb = float(a64.norm()), float(b64.norm())
    return float(a64 @ b64) / (na * nb) if na > 0 and nb > 0 else float("nan")


# --------------------------------------------------------------------------- permutations


def match_rows(ref: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """perm with cand[i] ≈ ref[perm[i]] by nearest neighbour on L2-normalized rows; None unless a bijection.

    Returns (perm (R,) int64, worst matched-row cosine). Rows of zeros never match.
    """
    if ref.ndim != 2 or ref.shape != cand.shape or ref.shape[0] < 2:
        return None
    r = torch.nn.functional.normalize(ref.float(), dim=1)
    c = torch.nn.functional.normalize(torch.nan_to_num(cand.float()), dim=1)
    sim = c @ r.T  # (R, R)
    best, perm = sim.max(dim=1)
    if torch.unique(perm).numel() != perm.numel():
        return None
    worst = float(best.min())
    return (perm, worst) if worst >= MATCH_COS else None


def describe_permutation(perm: Sequence[int] | torch.Tensor, heads: int | None = None) -> str:
    """Name the structure of a row permutation (``cand[i] = ref[perm[i]]``) of ``heads`` equal blocks.

    Within-head patterns: "halves swapped within each head", "interleaved vs NEOX rope order"
    (llama.cpp's Q/K permute or its inverse), or "shuffled within heads"; between heads: "heads reordered
    [2, 0, 1, …]". Without heads: "rows reordered (N of M moved)".
    """
    p = torch.as_tensor(perm, dtype=torch.long)
    n = p.numel()
    moved = int((p != torch.arange(n)).sum())
    if moved == 0:
        return "identity"
    if not heads or n % heads:
        return f"rows reordered ({moved} of {n} moved)"
    d = n // heads
    blocks = p.view(heads, d)
    src_head = blocks // d
    if not bool((src_head == src_head[:, :1]).all()):
        return f"rows reordered across heads ({moved} of {n} moved)"
    order = src_head[:, 0]
    within = blocks - (order * d)[:, None]  # (heads, d): source row inside the source head
    same = bool((within == within[:1]).all())
    parts = []
    if not torch.equal(order, torch.arange(heads)):
        shown = order.tolist()
        parts.append(f"heads reordered {shown[:8]}{' …' if heads > 8 else ''}")
    pattern = within[0] if same else None
    if pattern is None:
        parts.append("rows shuffled within heads (differently per head)")
    elif not torch.equal(pattern, torch.arange(d)):
        parts.append(_within_head(pattern, d))
    return "; ".join(parts) + f" ({heads} heads × {d} rows)"


def _within_head(pattern: torch.Tensor, d: int) -> str:
    from ..families.base import qk_permutation

    idx = torch.arange(d)
    if torch.equal(pattern, (idx + d // 2) % d):
        return "halves swapped within each head"
    rope = qk_permutation(1, d)  # llama.cpp permute_qk: HF (NEOX halves) rows → GGUF (interleaved pairs)
    if torch.equal(pattern, rope):
        return "interleaved vs NEOX rope order (llama.cpp's Q/K permute applied)"
    if torch.equal(pattern, torch.argsort(rope)):
        return "interleaved vs NEOX rope order (llama.cpp's Q/K permute inverted)"
    moved = int((pattern != idx).sum())
    return f"rows shuffled within each head ({moved} of {d} moved)"


def permutation(ref: torch.Tensor, cand: torch.Tensor, heads_out: int | None = None,
                heads_in: int | None = None) -> Signature | None:
    """Rows or columns of ``cand`` are ``ref``'s in another order (see ``describe_permutation``)."""
    for axis, heads in (("rows", heads_out), ("columns", heads_in)):
        r, c = (ref, cand) if axis == "rows" else (ref.T, cand.T)
        m = match_rows(r, c)
        if m is None:
            continue
        perm, worst = m
        restored = _cos(r[perm], c)
        if restored < RESTORED:
            continue
        what = describe_permutation(perm, heads)
        if what == "identity":
            return None
        return Signature("layout_permutation", f"{axis} permuted: {what} (cosine {restored:.4f} once undone)",
                         {"axis": axis, "structure": what, "restored_cosine": restored, "worst_row_cosine": worst,
                          "perm_head": perm[:16].tolist()})
    return None


# --------------------------------------------------------------------------- dense tensors


def norm_convention(ref: torch.Tensor, cand: torch.Tensor) -> Signature | None:
    """A norm gain off by the (1 + w) convention: fit cand ≈ a + b·ref; name a = ±1 (b = 1) or a + b = 1."""
    r, c = ref.double().flatten(), cand.double().flatten()
    if r.numel() < 4 or float(r.std()) == 0:
        return None
    A = torch.stack([torch.ones_like(r), r], dim=1)
    sol = torch.linalg.lstsq(A, c.unsqueeze(1)).solution.flatten()
    a, b = float(sol[0]), float(sol[1])
    cn = max(float(c.norm()), 1e-30)
    resid = float((c - (a + b * r)).norm() / cn)
    plain = float((c - r).norm() / cn)  # cand vs ref as they are: the fit must explain far more than that
    if resid > 0.01 or abs(a) < 0.05 or plain < max(5 * resid, 1e-3):
        return None  # gains all near 1 fit any line through (1, 1): only a difference beyond rounding counts
    ev = {"offset": a, "slope": b, "fit_residual": resid}
    if abs(b - 1) < FIT_TOL and abs(abs(a) - 1) < FIT_TOL:
        what = ("(1 + w) applied twice: every gain is the reference's + 1" if a > 0
                else "(1 + w) not applied: every gain is the reference's − 1")
        return Signature("norm_convention", f"cand ≈ ref {'+' if a > 0 else '−'} 1: {what}", ev)
    if abs(a + b - 1) < FIT_TOL and abs(b - 1) > FIT_TOL:
        s = 1.0 / b
        return Signature("norm_convention", f"cand ≈ 1 + (ref − 1)/{s:.4g}: a scale s = {s:.4g} folded as 1 + w/s "
                         "instead of (1 + w)/s", ev | {"s": s})
    return None


def embed_scale(alpha: float, scale: float) -> Signature | None:
    """The embedding off by exactly the model's embedding scale (√d) or its inverse."""
    if scale == 1.0 or not (alpha > 0 and math.isfinite(alpha)):
        return None
    if abs(alpha * scale - 1) < FIT_TOL:
        return Signature("embed_scale", f"cand ≈ ref/{scale:.4g} (1/√d): the embedding's √d scale is missing",
                         {"embed_scale": scale})
    if abs(alpha / scale - 1) < FIT_TOL:
        return Signature("embed_scale", f"cand ≈ {scale:.4g}·ref (√d): the embedding's √d scale applied twice",
                         {"embed_scale": scale})
    return None


# --------------------------------------------------------------------------- quantized linears


def derived_fp8_scales(ref: torch.Tensor, block: tuple[int | None, int | None]) -> torch.Tensor:
    """The scales the producer derives from ``ref`` (amax/448 per block), expanded to ref's shape."""
    from ..kernels import fp8 as kfp8
    from ..kernels.blocks import resolve_block

    blk = resolve_block(tuple(ref.shape), block)
    s = kfp8.dynamic_fp8_scale(ref.float(), blk)
    return kfp8.expand_scale(s, tuple(ref.shape), blk)


def raw_codes(ref: torch.Tensor, cand: torch.Tensor, lin: Any) -> Signature | None:
    """The candidate matches the reference only after the producer's own scales are applied: scales dropped."""
    from ..candidates.qlinear import FP8Linear

    if not isinstance(lin, FP8Linear):
        return None
    s = derived_fp8_scales(ref, lin.w_block)
    restored = _cos(cand * s, ref)
    if not restored >= RESTORED:
        return None
    ones = bool(torch.all(lin.weight_scale == 1.0))
    a = float((ref.double().flatten() @ (cand * s).double().flatten()) / (ref.double().flatten().norm() ** 2))
    if abs(a - 1) > 0.1:
        return None
    return Signature("scale_ignored", "the weight runs on its raw FP8 codes: it matches the reference once the "
                     f"producer's scales (amax/448) are applied (cosine {restored:.4f}, α {a:.4g})"
                     + ("; every stored weight_scale is 1.0" if ones else ""),
                     {"restored_cosine": restored, "stored_scales_one": ones})


def _is_pow2(x: torch.Tensor) -> bool:
    x = x.double()
    m, _ = torch.frexp(x[x > 0])
    return bool(x.numel() > 0 and torch.all(m == 0.5))


def pow2_scales(ref: torch.Tensor, cand: torch.Tensor, lin: Any) -> Signature | None:
    """FP8 scales rounded to powers of two without requantizing: per-block α = stored/derived ∈ (0.5, 2)."""
    from ..candidates.qlinear import FP8Linear
    from ..kernels import fp8 as kfp8
    from ..kernels.blocks import resolve_block

    if not isinstance(lin, FP8Linear) or not _is_pow2(lin.weight_scale):
        return None
    blk = resolve_block(tuple(ref.shape), lin.w_block)
    derived = kfp8.dynamic_fp8_scale(ref.float(), blk).reshape(lin.weight_scale.shape)
    ratio = lin.weight_scale.to(derived.device).double() / derived.double()  # the sides may sit on two devices
    if _is_pow2(derived) or float((ratio - 1).abs().max()) < FIT_TOL:
        return None  # the producer's own scales were powers of two: nothing was rounded
    if float(ratio.min()) <= 0.5 or float(ratio.max()) >= 2.0:
        return None  # rounding to a power of two moves a scale by less than 2x (scales set to 1 are not rounding)
    pred = kfp8.expand_scale(ratio.float(), tuple(ref.shape), blk)
    fit = _cos(cand, ref * pred)
    if fit < 0.999:
        return None
    up = bool(torch.all(ratio >= 1 - 1e-6))
    return Signature("scale_rounding", f"every stored scale is a power of two, {'rounded up' if up else 'rounded'} "
                     f"from the producer's (per-block α {float(ratio.min()):.3g}–{float(ratio.max()):.3g}, mean "
                     f"{float(ratio.mean()):.3g}) while the FP8 codes were not requantized (cosine {fit:.4f} with the "
                     "predicted α)", {"alpha_min": float(ratio.min()), "alpha_max": float(ratio.max()),
                                      "alpha_mean": float(ratio.mean()), "rounded_up": up})


def exponent_offset(alpha: float, cosine: float, lin: Any) -> Signature | None:
    """An MXFP4 weight off by an exact power of two at high cosine: an E8M0 offset applied twice."""
    from ..candidates.qlinear import MXFP4Linear
    from ..kernels.mxfp4 import ELEMENT_OFFSET, exponent_offset_error

    if not isinstance(lin, MXFP4Linear) or not cosine > 0.95:
        return None
    k = exponent_offset_error(alpha)
    if k is None:
        return None
    why = (f"the E2M1 element offset ({ELEMENT_OFFSET}) subtracted twice from the E8M0 exponents"
           if k == -ELEMENT_OFFSET else f"E8M0 exponents off by {k:+d}")
    return Signature("exponent_offset", f"cand ≈ 2^{k}·ref = {2.0**k:g}·ref: {why}", {"power": k})


def sibling_scale(alpha: float, own: float, siblings: dict[str, float], convention: str) -> Signature | None:
    """α equals what dequantizing with a sibling's stored scale gives: ``s_sib/s_own`` (multiplier) or
    ``g_own/g_sib`` (divisor). ``siblings``: sibling module → its stored scale."""
    for name, sib in siblings.items():
        if not (sib > 0 and own > 0) or sib == own:
            continue
        pred = sib / own if convention == "multiply" else own / sib
        if abs(alpha / pred - 1) < FIT_TOL:
            what = "weight_scale (multiplier)" if convention == "multiply" else "global scale (divisor)"
            return Signature("shard_scale_mismatch", f"dequantized with {name}'s {what}: α {alpha:.4g} = "
                             f"{pred:.4g} predicted from the stored scales ({sib:.4g} vs own {own:.4g})",
                             {"sibling": name, "predicted_alpha": pred, "own_scale": own, "sibling_scale": sib})
    return None


__all__ = [
    "Signature",
    "describe_permutation",
    "embed_scale",
    "exponent_offset",
    "match_rows",
    "norm_convention",
    "permutation",
    "pow2_scales",
    "raw_codes",
    "sibling_scale",
]
