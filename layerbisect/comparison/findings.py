"""Findings: the "where and why" of a comparison, as generic records.

Design notes
- A ``Finding`` is generic: a ``kind`` string and an ``evidence`` dict of JSON-able values.
  Detectors here produce the kinds below; other code (the localizer, weight audits) appends
  its own kinds ("culprit", "weight_audit", ...) and every output renders them the same way.
- Each detector is a small function ``Comparison -> list[Finding]``; ``detect_all`` runs
  them in a fixed order. They never recompute metrics, only read the ``Comparison``.
- Order matters for a reader: ``sort_findings`` puts the most severe first and, within a
  severity, the earliest point in execution order first (the first NaN is the cause; the
  later ones are consequences).

Kinds produced here: identical, tokenizer_mismatch, nonfinite_onset, reference_nonfinite,
first_divergence, norm_blowup, residual_growth, softcap_saturation, most_divergent_layer,
logit_summary, missing_points, shape_mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from layerbisect.comparison.comparator import Comparison

Severity = Literal["critical", "error", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("critical", "error", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass
class Finding:
    severity: Severity
    kind: str
    title: str
    point: str | None = None
    layer: int | None = None
    op: str | None = None
    token_index: int | None = None
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in keys})

    def where(self) -> str:
        """A short location string: ``layers.2.mlp.down @ token 3``."""
        loc = self.point or (f"layer {self.layer}" if self.layer is not None else "")
        if self.token_index is not None:
            loc = f"{loc} @ token {self.token_index}" if loc else f"token {self.token_index}"
        return loc


def sort_findings(findings: Iterable[Finding], order: Mapping[str, int] | None = None) -> list[Finding]:
    """Severity first, then execution order of the point (unknown points last), stable otherwise."""
    order = order or {}

    def key(f: Finding) -> tuple[int, float, float]:
        if f.point is not None and f.point in order:
            o = float(order[f.point])
        elif f.layer is not None:
            # A layer-level finding sorts with its layer's first point.
            o = min((v for k, v in order.items() if k.startswith(f"layers.{f.layer}.")), default=math.inf)
        else:
            o = math.inf
        return (_RANK.get(f.severity, len(SEVERITIES)), o, float(f.token_index if f.token_index is not None else -1))

    return sorted(findings, key=key)


# --------------------------------------------------------------------------- detectors


def _id_at(ids: list[int], pieces: list[str], i: int) -> str:
    """``id 5279 '▁capital'`` at position ``i`` (the piece when known); ``none`` past the end."""
    if i >= len(ids):
        return "none"
    return f"id {ids[i]}" + (f" {pieces[i]!r}" if i < len(pieces) else "")


def detect_tokenizer_mismatch(cmp: Comparison) -> list[Finding]:
    out: list[Finding] = []
    fp_r = cmp.ref_meta.get("tokenizer_fingerprint")
    fp_c = cmp.cand_meta.get("tokenizer_fingerprint")
    if fp_r is not None and fp_c is not None and fp_r != fp_c:
        out.append(
            Finding(  # the compared ids are the same (a difference in ids is the finding below): a warning
                "warning",
                "tokenizer_mismatch",
                "Tokenizers differ",
                detail=f"reference tokenizer fingerprint {fp_r} ≠ candidate {fp_c}; both sides ran the same ids, "
                "but text encoded by the candidate's own tokenizer may give other ids.",
                evidence={"ref_fingerprint": str(fp_r), "cand_fingerprint": str(fp_c)},
            )
        )
    if cmp.token_mismatch:
        first = cmp.token_mismatch[0]
        tr, tc = cmp.ref_token_ids, cmp.cand_token_ids
        pr, pc = list(cmp.ref_meta.get("token_pieces") or []), list(cmp.cand_meta.get("token_pieces") or [])
        out.append(
            Finding(
                "critical",
                "tokenizer_mismatch",
                f"Token ids differ at {len(cmp.token_mismatch)} position(s)",
                token_index=first,
                detail=(
                    f"first at token {first}: reference {_id_at(tr, pr, first)}, candidate {_id_at(tc, pc, first)}; "
                    "only matching positions were compared."
                    + (f" Reference: {'|'.join(pr[:32])}; candidate: {'|'.join(pc[:32])} (pieces in the reference's "
                       "vocabulary)." if pr and pc else "")
                ),
                evidence={
                    "positions": list(cmp.token_mismatch[:64]),
                    "n_positions": len(cmp.token_mismatch),
                    "ref_len": len(tr),
                    "cand_len": len(tc),
                },
            )
        )
    return out


def _first_nonfinite(cmp: Comparison, side: str) -> tuple[str, int, int] | None:
    col = f"{side}_nonfinite"
    for name, r in cmp.points.items():
        if getattr(r, col) > 0:
            rows = cmp.df[(cmp.df["point"] == name) & (cmp.df[col] > 0)]
            tok = int(rows["token_index"].iloc[0]) if len(rows) else -1
            return name, tok, int(getattr(r, col))
    return None


def detect_nonfinite(cmp: Comparison) -> list[Finding]:
    out: list[Finding] = []
    for side, kind, label in (("cand", "nonfinite_onset", "candidate"), ("ref", "reference_nonfinite", "reference")):
        hit = _first_nonfinite(cmp, side)
        if hit is None:
            continue
        name, tok, count = hit
        r = cmp.points[name]
        n_points = sum(1 for p in cmp.points.values() if getattr(p, f"{side}_nonfinite") > 0)
        out.append(
            Finding(
                "critical",
                kind,
                f"First NaN/Inf in the {label} at {name}, token {tok}",
                point=name,
                layer=r.layer,
                op=r.op,
                token_index=tok,
                detail=(
                    f"{count} non-finite value(s) at {name}; {n_points} point(s) in execution order are affected "
                    "from here on. The op that produced them (or its input scale) is the first suspect."
                    if side == "cand"
                    else f"The reference itself produced {count} non-finite value(s) at {name}: "
                    "fix the reference (dequantization or graph) before trusting any comparison."
                ),
                evidence={"count": count, "affected_points": n_points, "side": side},
            )
        )
    return out


def detect_first_divergence(cmp: Comparison) -> list[Finding]:
    t = cmp.thresholds.min_cosine
    if t is None:
        return []
    for name, r in cmp.points.items():
        if not r.full:
            continue
        if math.isnan(r.min_cosine) or r.min_cosine < t:
            below = cmp.df[(cmp.df["point"] == name) & ~(cmp.df["cosine"] >= t)]
            # A sub-op whose error the residual stream absorbs (a post-norm of a tiny MLP output, say)
            # is worth a look, not an alarm: only an error when the layer's output diverges too.
            res_name = cmp.residual_point(r.layer) if r.layer is not None else None
            res = cmp.points.get(res_name) if res_name and res_name != name else None
            absorbed = res is not None and res.full and not math.isnan(res.min_cosine) and res.min_cosine >= t
            note = (
                f" The residual stream after layer {r.layer} stays at cosine {res.min_cosine:.4f}: "
                "the error is absorbed there." if absorbed else ""
            )
            return [
                Finding(
                    "warning" if absorbed else "error",
                    "first_divergence",
                    f"First divergent point: {name} (cosine {r.min_cosine:.4f} < {t})",
                    point=name,
                    layer=r.layer,
                    op=r.op,
                    token_index=r.worst_token,
                    detail=(
                        f"Earliest point in execution order whose per-token cosine falls below {t}: "
                        f"{len(below)}/{r.n_tokens} token(s), worst token {r.worst_token}. "
                        "Everything before it matched; look at this op's weights, scales and kernel." + note
                    ),
                    evidence={
                        "min_cosine": r.min_cosine,
                        "mean_cosine": r.mean_cosine,
                        "threshold": t,
                        "tokens_below": [int(x) for x in below["token_index"].tolist()[:64]],
                        "max_rel_l2": r.max_rel_l2,
                    },
                )
            ]
    return []


def detect_norm_blowup(cmp: Comparison) -> list[Finding]:
    out: list[Finding] = []
    t = cmp.thresholds.max_norm_ratio
    if t is not None:
        for name, r in cmp.points.items():
            if r.max_norm_ratio > t:
                rows = cmp.df[(cmp.df["point"] == name)]
                tok = (
                    int(rows.loc[rows["norm_ratio"].idxmax(), "token_index"])
                    if rows["norm_ratio"].notna().any()
                    else None
                )
                res_name = cmp.residual_point(r.layer) if r.layer is not None else None
                res = cmp.points.get(res_name) if res_name and res_name != name else None
                # A single token's sub-op ratio that the layer output does not share is noise, not a blow-up.
                absorbed = res is not None and not math.isnan(res.max_norm_ratio) and res.max_norm_ratio <= t
                out.append(
                    Finding(
                        "warning" if absorbed else "error",
                        "norm_blowup",
                        f"Norm blow-up starts at {name} (‖cand‖/‖ref‖ = {r.max_norm_ratio:.3g})",
                        point=name,
                        layer=r.layer,
                        op=r.op,
                        token_index=tok,
                        detail=(
                            f"First point in execution order whose candidate norm exceeds {t}× the reference "
                            f"(mean over tokens {r.mean_norm_ratio:.3g}). A scale applied twice or a missing norm "
                            "shows up as exactly this."
                            + (
                                f" The layer output stays at ratio {res.max_norm_ratio:.3g}: absorbed there."
                                if absorbed and res is not None
                                else ""
                            )
                        ),
                        evidence={
                            "max_norm_ratio": r.max_norm_ratio,
                            "mean_norm_ratio": r.mean_norm_ratio,
                            "threshold": t,
                        },
                    )
                )
                break
    out += _residual_growth(cmp)
    return out


def _residual_growth(cmp: Comparison, min_steps: int = 2) -> list[Finding]:
    """Residual norm ratio (mean over tokens) increasing layer after layer: the signature of a compounding scale.

    A growth step is a layer whose ratio exceeds the previous layer's by more than 2 %; the
    longest run of at least ``min_steps`` consecutive steps that ends above the blow-up
    threshold is reported, starting at its first growing layer.
    """
    layers = cmp.layers()
    names = [cmp.residual_point(i) for i in layers]
    ratios = [cmp.points[n].mean_norm_ratio if n else math.nan for n in names]
    best: tuple[int, int] | None = None  # [a, b): indices of growing layers
    a = None
    for j in range(1, len(ratios) + 1):
        grows = j < len(ratios) and ratios[j] > ratios[j - 1] * 1.02
        if grows and a is None:
            a = j
        elif not grows and a is not None:
            if j - a >= min_steps and (best is None or j - a > best[1] - best[0]):
                best = (a, j)
            a = None
    if best is None:
        return []
    a, b = best
    t = cmp.thresholds.max_norm_ratio or 1.5
    if not ratios[b - 1] > t:
        return []
    name = names[a]
    return [
        Finding(
            "warning",
            "residual_growth",
            f"Residual norm ratio grows at every layer from {layers[a]} to {layers[b - 1]} "
            f"({ratios[a - 1]:.3g} → {ratios[b - 1]:.3g})",
            point=name,
            layer=layers[a],
            op=cmp.points[name].op if name else None,
            detail="The candidate's residual stream gets larger than the reference's at every layer of this run: "
            "an error that compounds (e.g. a scale applied twice) rather than one bad layer.",
            evidence={"layers": layers[a - 1 : b], "mean_norm_ratio": ratios[a - 1 : b]},
        )
    ]


def detect_saturation(cmp: Comparison) -> list[Finding]:
    out: list[Finding] = []
    for s in cmp.saturation:
        if s:
            continue
        final = s.kind == "final"
        out.append(
            Finding(
                "critical" if final else "error",
                "softcap_saturation",
                f"{'Final logits' if final else f'Attention scores of layer {s.layer}'} pinned at the softcap "
                f"wall ({s.cand_share:.1%} of values vs {s.ref_share:.1%} in the reference)",
                point=s.point,
                layer=s.layer,
                op=None if final else "attn.scores",
                token_index=s.first_saturated_token,
                detail=(
                    f"|cap·tanh(x/cap)| ≥ 0.99·cap with cap {s.cap:g}; largest pre-softcap magnitude "
                    f"candidate {s.cand_max_pre:.4g} vs reference {s.ref_max_pre:.4g}. "
                    + (f"Top values at token {s.top_token} (as bf16 prints them): candidate "
                       f"{_bf16_list(s.cand_top)} vs reference {_bf16_list(s.ref_top)}. " if s.cand_top else "")
                    + "A saturated distribution collapses to repeated tokens; look upstream for a norm blow-up."
                ),
                evidence={
                    "cap": s.cap,
                    "kind": s.kind,
                    "ref_share": s.ref_share,
                    "cand_share": s.cand_share,
                    "ref_max_pre_softcap": s.ref_max_pre,
                    "cand_max_pre_softcap": s.cand_max_pre,
                    "cand_token_share": list(s.cand_token_share[:64]),
                    "top_token": s.top_token,
                    "ref_top": [list(x) for x in s.ref_top],
                    "cand_top": [list(x) for x in s.cand_top],
                },
            )
        )
    return out


def _bf16_list(top: Sequence[tuple[int, float]]) -> str:
    """``[30.0 (id 496), 21.62 (id 236780)]``: values rounded to bfloat16, as an engine running in bf16 shows them."""
    import torch

    vals = torch.tensor([v for _, v in top], dtype=torch.float64).to(torch.bfloat16).double().tolist()
    return "[" + ", ".join(f"{v:.4g} (id {i})" for (i, _), v in zip(top, vals)) + "]"


def detect_most_divergent_layer(cmp: Comparison) -> list[Finding]:
    layers = cmp.layers()
    if not layers:
        return []
    prev = cmp.points["embed"].mean_cosine if "embed" in cmp.points and cmp.points["embed"].full else 1.0
    best: tuple[float, int, float, float] | None = None
    for i in layers:
        name = cmp.residual_point(i)
        r = cmp.points[name] if name else None
        if r is None or not r.full:
            continue
        cur = r.mean_cosine
        drop = (prev - cur) if not (math.isnan(prev) or math.isnan(cur)) else math.nan
        if not math.isnan(drop) and (best is None or drop > best[0]):
            best = (drop, i, prev, cur)
        prev = cur
    if best is None or best[0] <= 1e-12:  # identical sides give float64 rounding (~1e-16), not a layer
        return []
    drop, i, before, after = best
    name = cmp.residual_point(i)
    worst_ops = sorted(
        (r for r in cmp.points.values() if r.layer == i and r.full and not math.isnan(r.min_cosine)),
        key=lambda r: r.mean_cosine,
    )
    failing = after < (cmp.thresholds.min_cosine or -1.0)
    return [
        Finding(
            "warning" if failing else "info",
            "most_divergent_layer",
            f"Layer {i} added the most error (residual cosine {before:.6f} → {after:.6f})",
            point=name,
            layer=i,
            op=worst_ops[0].op if worst_ops else None,
            detail=(
                f"Largest drop in mean residual cosine from the previous layer: {drop:.3g}. "
                f"Worst op inside the layer: {worst_ops[0].op if worst_ops else '-'}."
            ),
            evidence={"drop": drop, "cosine_before": before, "cosine_after": after},
        )
    ]


def detect_logit_summary(cmp: Comparison) -> list[Finding]:
    lg = cmp.logits
    if lg is None:
        return []
    return [
        Finding(
            "info" if lg else "error",
            "logit_summary",
            f"Logits: KL {lg.mean_kl:.4g} nats (max {lg.max_kl:.4g}), top-1 agreement {lg.top1_agreement:.1%}, "
            f"top-5 overlap {lg.mean_top5_overlap:.1%}",
            point="logits",
            # the position of the max KL the title gives (the first top-1 miss is in the detail)
            token_index=lg.worst_kl_token if lg.worst_kl_token is not None else lg.first_top1_mismatch,
            detail=str(lg) + (f"; max KL at token {lg.worst_kl_token}" if lg.worst_kl_token is not None else "")
            + (f"; first top-1 miss at token {lg.first_top1_mismatch}" if lg.first_top1_mismatch is not None
               else ""),
            evidence=lg.to_dict(),
        )
    ]


def detect_routing(cmp: Comparison) -> list[Finding]:
    """MoE layers: where the candidate first sends a token to other experts than the reference does."""
    from layerbisect.comparison.routing import first_flip, mean_overlap

    res = cmp.routing
    if not res:
        return []
    flip = first_flip(res)
    agree = mean_overlap(res)
    per_layer = {r.layer: round(r.mean_overlap, 4) for r in res}
    if flip is None:
        return [Finding("info", "routing", f"Expert routing: every token goes to the same experts in all "
                        f"{len(res)} MoE layers", evidence={"mean_topk_overlap": agree, "per_layer": per_layer})]
    n_diff = sum(round(r.n_tokens * (1 - r.same_set_share)) for r in res)
    n_all = sum(r.n_tokens for r in res)
    return [
        Finding(
            "warning",
            "routing",
            f"Expert routing differs first at layer {flip.layer}, token {flip.first_diff_token}: "
            f"reference experts {list(flip.first_diff_ref)}, candidate {list(flip.first_diff_cand)}",
            point=flip.point,
            layer=flip.layer,
            op="mlp.route",
            token_index=flip.first_diff_token,
            detail=f"{n_diff} of {n_all} (layer, token) pairs route to another expert set; mean top-k overlap "
            f"{agree:.1%}. A token routed differently takes another path through the layer: its error downstream "
            "is a router flip, not the error of any one weight.",
            evidence={"mean_topk_overlap": agree, "per_layer": per_layer, "first": flip.to_dict(),
                      "n_flipped": n_diff, "n_pairs": n_all},
        )
    ]


def detect_structure(cmp: Comparison) -> list[Finding]:
    out: list[Finding] = []
    if cmp.only_ref or cmp.only_cand:
        out.append(
            Finding(
                "warning",
                "missing_points",
                f"{len(cmp.only_ref)} point(s) only in the reference, {len(cmp.only_cand)} only in the candidate",
                detail="Points present on one side only were not compared. A missing norm point can mean a loader "
                "dropped the norm weights.",
                evidence={"only_ref": list(cmp.only_ref), "only_cand": list(cmp.only_cand)},
            )
        )
    for name, (rs, cs) in cmp.shape_mismatch.items():
        out.append(
            Finding(
                "error",
                "shape_mismatch",
                f"Shapes differ at {name}: {list(rs)} vs {list(cs)}",
                point=name,
                detail="This point was not compared.",
                evidence={"ref_shape": list(rs), "cand_shape": list(cs)},
            )
        )
    return out


def detect_identical(cmp: Comparison) -> list[Finding]:
    """Every compared value equal (rel L2 0 at every fully compared point, same non-finite counts, logits KL 0)."""
    pts = [r for r in cmp.points.values() if r.full]
    if not pts or any(r.max_rel_l2 != 0 or r.ref_nonfinite != r.cand_nonfinite for r in pts):
        return []
    if cmp.logits is not None and cmp.logits.mean_kl != 0:
        return []
    return [Finding("info", "identical", f"Identical: the candidate equals the reference at all {len(pts)} "
                    "compared points" + (" and the logits" if cmp.logits is not None else ""),
                    detail="Relative L2 error 0 at every point: no layer diverges (the same file, or the same "
                    "weights and arithmetic).")]


DETECTORS: tuple[Callable[[Comparison], list[Finding]], ...] = (
    detect_identical,
    detect_tokenizer_mismatch,
    detect_nonfinite,
    detect_first_divergence,
    detect_norm_blowup,
    detect_saturation,
    detect_most_divergent_layer,
    detect_logit_summary,
    detect_routing,
    detect_structure,
)


def detect_all(cmp: Comparison) -> list[Finding]:
    findings: list[Finding] = []
    for d in DETECTORS:
        findings += d(cmp)
    return sort_findings(findings, cmp.order)
