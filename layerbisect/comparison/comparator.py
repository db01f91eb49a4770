"""Align two ``Captures`` and compute every metric per point × token.

Design notes
- Alignment by canonical name: the intersection is compared in the reference's insertion
  order, which is execution order (docs/CAPTURE_NAMES.md); names on one side only are
  listed, not silently dropped (a loader that drops a norm shows up here).
- Alignment by position: both sides carry ``token_ids``; only positions whose ids agree
  are compared (a tokenizer mismatch is a finding, not a wall of red numbers). Without ids
  on one side, positions are assumed aligned.
- Summary-only captures (norms, NaN/Inf counts) still give the norm ratio and non-finite
  counts, which are exactly what NaN-onset and blow-up detection need; the difference
  metrics are NaN there and ``PointResult.full`` is False.
- Everything is computed once here; findings, reports and the gate only read the
  ``Comparison``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from layerbisect.capture import Captures, layer_of, layer_point, op_of
from layerbisect.comparison import metrics as M
from layerbisect.comparison.results import LogitResult, PointResult, SaturationResult, Thresholds
from layerbisect.comparison.routing import RoutingResult, compare_routing, is_route_point

POINT_COLUMNS: tuple[str, ...] = (
    "point",
    "layer",
    "op",
    "order",
    "token_index",
    "token_id",
    "cosine",
    "rel_l2",
    "norm_ratio",
    "max_abs",
    "sqnr_db",
    "ref_nonfinite",
    "cand_nonfinite",
    "ref_norm",
    "cand_norm",
)


@dataclass
class ModelInfo:
    arch: str
    n_layers: int
    final_softcap: float | None = None
    attn_softcap: float | None = None
    vocab_size: int | None = None


@dataclass
class Comparison:
    """Everything the comparator computed; findings, reports and the gate read only this."""

    info: ModelInfo
    thresholds: Thresholds
    df: pd.DataFrame  # one row per point × compared token, columns POINT_COLUMNS
    points: dict[str, PointResult]  # in execution order
    logits: LogitResult | None
    logits_df: pd.DataFrame  # one row per compared position: kl, top1, top5, argmax ids
    saturation: list[SaturationResult]
    positions: list[int]  # token indices compared
    token_mismatch: list[int]  # token indices where the ids differ (or exist on one side only)
    ref_token_ids: list[int]
    cand_token_ids: list[int]
    only_ref: list[str] = field(default_factory=list)
    only_cand: list[str] = field(default_factory=list)
    routing: list[RoutingResult] = field(default_factory=list)  # MoE layers: which experts each side chose
    routing_df: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per MoE layer × token
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    ref_meta: dict[str, Any] = field(default_factory=dict)
    cand_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> dict[str, int]:
        return {name: r.order for name, r in self.points.items()}

    def points_df(self) -> pd.DataFrame:
        """One row per point with the aggregates, in execution order."""
        rows = [r.to_dict() for r in self.points.values()]
        cols = list(PointResult.__dataclass_fields__)
        cols.remove("thresholds")
        df = pd.DataFrame(rows, columns=cols + ["passed"])
        df["layer"] = df["layer"].astype("Int64")
        return df

    def residual_point(self, i: int) -> str | None:
        """The residual-stream point of layer i: ``layers.{i}.out``, else the layer's last point."""
        name = layer_point(i, "out")
        if name in self.points:
            return name
        last = [n for n, r in self.points.items() if r.layer == i]
        return last[-1] if last else None

    def layers(self) -> list[int]:
        return sorted({r.layer for r in self.points.values() if r.layer is not None})

    def layer_table(self) -> pd.DataFrame:
        """Per layer: residual cosine, norm ratio, rel err, worst op, non-finite (the report's main table)."""
        rows = []
        for i in self.layers():
            res = self.points[self.residual_point(i)]  # type: ignore[index]
            in_layer = [r for r in self.points.values() if r.layer == i]
            full = [r for r in in_layer if r.full and not math.isnan(r.min_cosine)]
            worst = min(full, key=lambda r: r.min_cosine) if full else None
            rows.append(
                {
                    "layer": i,
                    "residual_point": res.point,
                    "residual_min_cosine": res.min_cosine,
                    "residual_mean_cosine": res.mean_cosine,
                    "residual_max_norm_ratio": res.max_norm_ratio,
                    "residual_mean_norm_ratio": res.mean_norm_ratio,
                    "residual_max_rel_l2": res.max_rel_l2,
                    "worst_op": worst.op if worst is not None else "",
                    "worst_op_min_cosine": worst.min_cosine if worst is not None else math.nan,
                    "ref_nonfinite": sum(r.ref_nonfinite for r in in_layer),
                    "cand_nonfinite": sum(r.cand_nonfinite for r in in_layer),
                    "passed": all(bool(r) for r in in_layer),
                }
            )
        return pd.DataFrame(rows)

    def residual_cosine_grid(self) -> pd.DataFrame:
        """Layers × token_index of per-token residual cosine (for the heat map)."""
        names = [self.residual_point(i) for i in self.layers()]
        sub = self.df[self.df["point"].isin([n for n in names if n])]
        if sub.empty:
            return pd.DataFrame()
        return sub.pivot(index="layer", columns="token_index", values="cosine").sort_index()


def _align_positions(
    ref: Captures, cand: Captures, n_rows: int, positions: Sequence[int] | None
) -> tuple[list[int], list[int]]:
    tr, tc = list(ref.token_ids), list(cand.token_ids)
    if tr and tc:
        n = min(len(tr), len(tc), n_rows)
        same = [i for i in range(n) if tr[i] == tc[i]]
        mismatch = [i for i in range(min(len(tr), len(tc))) if tr[i] != tc[i]]
        mismatch += list(range(min(len(tr), len(tc)), max(len(tr), len(tc))))
    else:
        same, mismatch = list(range(n_rows)), []
    if positions is not None:
        wanted = {int(p) if p >= 0 else n_rows + int(p) for p in positions}
        same = [i for i in same if i in wanted]
    return same, mismatch


def _n_rows(c: Captures, name: str) -> int:
    if name in c.tensors:
        return int(c.tensors[name].shape[0])
    return int(c.summaries[name].norm.shape[0])


def _host_rows(side: Captures, name: str, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of point ``name`` on the host, where every number of the comparison is (a store may be kept on
    its device: the expected lane's)."""
    t = side.tensors[name]
    return t[idx.to(t.device)].cpu()


def _finite_f(x: torch.Tensor) -> float:
    return float(x) if x.numel() else math.nan


def _nanmin(x: torch.Tensor) -> float:
    # NaN counts as the worst value: a NaN cosine must not hide behind a finite minimum.
    if x.numel() == 0:
        return math.nan
    return math.nan if torch.isnan(x).any() else float(x.min())


def _nanmax(x: torch.Tensor) -> float:
    if x.numel() == 0:
        return math.nan
    return math.nan if torch.isnan(x).any() else float(x.max())


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else math.nan


def _full_point_metrics(
    ref: Captures,
    cand: Captures,
    names: list[str],
    idx: torch.Tensor,
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
    device: str | torch.device | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """``metrics.point_metrics`` (on the CPU) of every point both sides hold whole, the rows of all points of one
    width stacked into one call (hundreds of points, a handful of widths: no per-point pass of Python and float64
    copies); the points whose shapes differ go to ``shape_mismatch``. On ``device`` the rows are gathered and
    reduced there and nothing waits for it until the one copy back at the end."""
    dev = torch.device(device) if device is not None else None
    idx_dev = idx.to(dev) if dev is not None else idx
    if dev is not None:  # every point uploaded once (kept with the store: the reference's is read again)
        ref, cand = ref.on(dev), cand.on(dev)
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        if name not in ref.tensors or name not in cand.tensors:
            continue
        r, c = ref.tensors[name], cand.tensors[name]
        if r.shape[1:] != c.shape[1:]:
            shape_mismatch[name] = (tuple(r.shape), tuple(c.shape))
            continue
        groups.setdefault(tuple(r.shape[1:]), []).append(name)

    def rows(side: Captures, group: list[str]) -> torch.Tensor:
        # on a device the rows are picked there: no gather on the host (another thread may be busy there)
        parts = [side.tensors[g][idx] if dev is None else side.tensors[g].to(dev)[idx_dev] for g in group]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    n = int(idx.numel())
    out: dict[str, dict[str, torch.Tensor]] = {}
    for group in groups.values():
        got = M.point_metrics(rows(ref, group), rows(cand, group))
        if dev is not None:  # one copy back per metric and width
            got = {k: v.cpu() for k, v in got.items()}
        for j, g in enumerate(group):
            out[g] = {k: v[j * n : (j + 1) * n] for k, v in got.items()}
    return out


def compare_captures(
    ref: Captures,
    cand: Captures,
    info: ModelInfo,
    *,
    thresholds: Thresholds | None = None,
    positions: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> Comparison:
    """Compare two capture stores point by point and token by token (see module notes).

    ``device``: where the per-row metrics of the full points are computed (float64; default the CPU, where the
    captures are). On a GPU every point's rows are uploaded and reduced there and all numbers come back at
    once: the same formulas, summed in another order (float64: the last digits may differ from the CPU's).
    """
    thresholds = thresholds or Thresholds()
    ref_names, cand_names = ref.names(), cand.names()
    cand_set, ref_set = set(cand_names), set(ref_names)
    common = [n for n in ref_names if n in cand_set and not is_route_point(n)]  # routes: compare_routing
    only_ref = [n for n in ref_names if n not in cand_set]  # (a route point only one side has is listed too)
    only_cand = [n for n in cand_names if n not in ref_set]

    n_rows = min((min(_n_rows(ref, n), _n_rows(cand, n)) for n in common), default=0)
    pos, mismatch = _align_positions(ref, cand, n_rows, positions)
    idx = torch.tensor(pos, dtype=torch.long)
    ids = list(ref.token_ids) if ref.token_ids else list(cand.token_ids)
    token_ids = [ids[i] if i < len(ids) else -1 for i in pos]

    cols: dict[str, list[Any]] = {c: [] for c in POINT_COLUMNS}
    points: dict[str, PointResult] = {}
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    full_metrics = _full_point_metrics(ref, cand, common, idx, shape_mismatch, device)
    for order, name in enumerate(common):
        if name in shape_mismatch:
            continue
        full = name in full_metrics
        if full:
            m = full_metrics.pop(name)
            cos, rel, mx, sq = m["cosine"], m["rel_l2"], m["max_abs"], m["sqnr_db"]
            rn, cn, rnf, cnf = m["ref_norm"], m["cand_norm"], m["ref_nonfinite"], m["cand_nonfinite"]
        else:
            # Summary-only on at least one side: norms are over finite values there.
            rs, cs = ref.summary(name), cand.summary(name)
            rn, cn = rs.norm[idx].to(torch.float64), cs.norm[idx].to(torch.float64)
            rnf, cnf = (rs.nan + rs.inf)[idx], (cs.nan + cs.inf)[idx]
            nan = torch.full((len(pos),), math.nan, dtype=torch.float64)
            cos, rel, mx, sq = nan, nan, nan, nan
        ratio = M.norm_ratio_from_norms(rn, cn)
        layer, op = layer_of(name), op_of(name)
        n = len(pos)
        cols["point"] += [name] * n
        cols["layer"] += [layer] * n
        cols["op"] += [op] * n
        cols["order"] += [order] * n
        cols["token_index"] += pos
        cols["token_id"] += token_ids
        for key, t in (
            ("cosine", cos),
            ("rel_l2", rel),
            ("norm_ratio", ratio),
            ("max_abs", mx),
            ("sqnr_db", sq),
            ("ref_norm", rn),
            ("cand_norm", cn),
        ):
            cols[key] += t.tolist()
        cols["ref_nonfinite"] += rnf.tolist()
        cols["cand_nonfinite"] += cnf.tolist()

        if full and n:
            worst_i = int(torch.nan_to_num(cos, nan=-2.0).argmin())
        elif n:
            worst_i = int(torch.nan_to_num(ratio, nan=math.inf).argmax())
        else:
            worst_i = None
        points[name] = PointResult(
            point=name,
            order=order,
            layer=layer,
            op=op,
            n_tokens=n,
            min_cosine=_nanmin(cos),
            mean_cosine=_mean(cos),
            max_rel_l2=_nanmax(rel),
            mean_rel_l2=_mean(rel),
            max_norm_ratio=_nanmax(ratio),
            mean_norm_ratio=_mean(ratio),
            min_norm_ratio=_nanmin(ratio),
            max_abs=_nanmax(mx),
            min_sqnr_db=_nanmin(sq),
            ref_nonfinite=int(rnf.sum()),
            cand_nonfinite=int(cnf.sum()),
            worst_token=pos[worst_i] if worst_i is not None else None,
            full=full,
            thresholds=thresholds,
        )

    df = pd.DataFrame(cols, columns=list(POINT_COLUMNS))
    df["layer"] = df["layer"].astype("Int64")
    for c in ("order", "token_index", "token_id", "ref_nonfinite", "cand_nonfinite"):
        df[c] = df[c].astype("int64")
    for c in ("cosine", "rel_l2", "norm_ratio", "max_abs", "sqnr_db", "ref_norm", "cand_norm"):
        df[c] = df[c].astype("float64")

    logits, logits_df = _compare_logits(ref, cand, pos, token_ids, thresholds, shape_mismatch)
    routing, routing_df = compare_routing(ref, cand, pos, token_ids)
    saturation = _saturation(ref, cand, info, pos, thresholds)
    return Comparison(
        info=info,
        thresholds=thresholds,
        df=df,
        points=points,
        logits=logits,
        logits_df=logits_df,
        saturation=saturation,
        positions=pos,
        token_mismatch=mismatch,
        ref_token_ids=list(ref.token_ids),
        cand_token_ids=list(cand.token_ids),
        only_ref=only_ref,
        only_cand=only_cand,
        routing=routing,
        routing_df=routing_df,
        shape_mismatch=shape_mismatch,
        ref_meta=dict(ref.meta),
        cand_meta=dict(cand.meta),
    )


LOGIT_COLUMNS = ("token_index", "token_id", "kl", "top1_agree", "top5_overlap", "ref_argmax", "cand_argmax")


def _compare_logits(
    ref: Captures,
    cand: Captures,
    pos: list[int],
    token_ids: list[int],
    thresholds: Thresholds,
    shape_mismatch: dict[str, Any],
) -> tuple[LogitResult | None, pd.DataFrame]:
    empty = pd.DataFrame(columns=list(LOGIT_COLUMNS))
    if "logits" not in ref.tensors or "logits" not in cand.tensors or "logits" in shape_mismatch or not pos:
        return None, empty
    idx = torch.tensor(pos, dtype=torch.long)
    r, c = _host_rows(ref, "logits", idx), _host_rows(cand, "logits", idx)
    lm = M.logit_metrics(r, c, 5)
    kl, top1, top5, ra, ca = lm["kl"], lm["top1"], lm["topk"], lm["ref_argmax"], lm["cand_argmax"]
    df = pd.DataFrame(
        {
            "token_index": pos,
            "token_id": token_ids,
            "kl": kl.tolist(),
            "top1_agree": top1.tolist(),
            "top5_overlap": top5.tolist(),
            "ref_argmax": ra.tolist(),
            "cand_argmax": ca.tolist(),
        }
    )
    miss = [pos[i] for i, ok in enumerate(top1.tolist()) if not ok]
    worst = int(torch.nan_to_num(kl, nan=math.inf).argmax())
    res = LogitResult(
        n_positions=len(pos),
        mean_kl=_mean(kl),
        max_kl=_nanmax(kl),
        worst_kl_token=pos[worst],
        top1_agreement=float(top1.double().mean()),
        mean_top5_overlap=float(top5.mean()),
        first_top1_mismatch=miss[0] if miss else None,
        thresholds=thresholds,
    )
    return res, df


def _saturation_of(
    name: str, kind: str, r: torch.Tensor, c: torch.Tensor, cap: float, pos: list[int], pre: bool, t: Thresholds
) -> SaturationResult:
    rs, cs = M.saturation_share(r, cap, pre_softcap=pre), M.saturation_share(c, cap, pre_softcap=pre)
    # Overall share weights tokens by their number of finite values.
    rf, cf = torch.isfinite(r).sum(dim=-1), torch.isfinite(c).sum(dim=-1)
    r_all = float((torch.nan_to_num(rs) * rf).sum() / max(int(rf.sum()), 1))
    c_all = float((torch.nan_to_num(cs) * cf).sum() / max(int(cf.sum()), 1))
    limit = t.max_saturation if t.max_saturation is not None else 0.0
    over = [pos[i] for i, v in enumerate(cs.tolist()) if v > limit]
    row = pos.index(over[0]) if over else len(pos) - 1

    def top(x: torch.Tensor) -> tuple[tuple[int, float], ...]:
        v = x[row].double()
        v = cap * torch.tanh(v / cap) if pre else v
        vals, ids = torch.topk(torch.nan_to_num(v, nan=-math.inf), min(5, v.shape[-1]))
        return tuple((int(i), float(a)) for i, a in zip(ids.tolist(), vals.tolist()))

    return SaturationResult(
        point=name,
        kind=kind,
        layer=layer_of(name),
        cap=float(cap),
        ref_share=r_all,
        cand_share=c_all,
        ref_max_pre=_finite_f(M.max_abs_value(r).max()) if pre else math.nan,
        cand_max_pre=_finite_f(M.max_abs_value(c).max()) if pre else math.nan,
        cand_token_share=tuple(cs.tolist()),
        ref_token_share=tuple(rs.tolist()),
        first_saturated_token=over[0] if over else None,
        thresholds=t,
        top_token=pos[row] if pos else None,
        ref_top=top(r) if pos else (),
        cand_top=top(c) if pos else (),
    )


def _saturation(
    ref: Captures, cand: Captures, info: ModelInfo, pos: list[int], t: Thresholds
) -> list[SaturationResult]:
    out: list[SaturationResult] = []
    if not pos:
        return out
    idx = torch.tensor(pos, dtype=torch.long)

    def both(name: str) -> bool:
        return (
            name in ref.tensors
            and name in cand.tensors
            and ref.tensors[name].shape[1:] == cand.tensors[name].shape[1:]
        )

    if info.final_softcap:
        if both("logits.pre_softcap"):
            name, pre = "logits.pre_softcap", True
        elif both("logits"):
            name, pre = "logits", False  # only post-softcap values: the share is still exact
        else:
            name = ""
        if name:
            r, c = _host_rows(ref, name, idx), _host_rows(cand, name, idx)
            out.append(_saturation_of(name, "final", r, c, info.final_softcap, pos, pre, t))
    if info.attn_softcap:
        for i in range(info.n_layers):
            name = layer_point(i, "attn.scores")
            if both(name):
                r, c = _host_rows(ref, name, idx), _host_rows(cand, name, idx)
                out.append(_saturation_of(name, "attention", r, c, info.attn_softcap, pos, True, t))
    return out
