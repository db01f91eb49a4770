"""The HTML report's figures, as plotly figure specs (``{"data": [...], "layout": {...}}``).

Design notes
- Built with plotly's graph objects (validated property names), serialised with plotly's own
  JSON encoder (NaN → null) and drawn in the page by the plotly.js bundled with the plotly
  package, inlined once: the page needs no network (``html.py``).
- Every trace carries ``customdata`` = the layer index (or -1 for the embedding, None for
  whole-model values) so a click on a point or a cell can jump to that layer's row.
- Depth plots show the residual stream (``layers.*.out``) and each sub-op as separate series;
  the residual and the three worst ops start visible, the others are one legend click away.
- Cosines close to 1 differ in their nines: plots and heat maps show 1 − cosine on a log
  scale (floored at 1e-10 so an exact match still shows), hover text gives the cosine itself.
  A non-finite value is drawn as a red cross on the top of a depth plot and as the darkest
  cell of a heat map: a NaN is the most important thing on the page.
- Figure ids are stable (tests and users rely on them): ``plot-cosine``, ``plot-norm-ratio``,
  ``plot-rel-l2``, ``plot-local``, ``heatmap-ops``, ``heatmap-tokens``, ``plot-saturation``,
  ``plot-attn-saturation``, ``plot-logits``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layerbisect.comparison.report import Report

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
)  # fmt: skip
REF, CAND, BAD, THRESH = "#1f77b4", "#d62728", "#b00020", "#b00020"
FLOOR = 1e-10  # 1 − cosine below this is drawn at the floor (log axis)
HEAT_MIN_LOG = -7.0  # heat maps: log10(1 − cosine) from here (all nines) to 0 (orthogonal)
AXIS = {"showline": True, "linecolor": "#999", "gridcolor": "#eee", "zeroline": False, "ticks": "outside"}
BASE_LAYOUT = {
    "template": "none",
    "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
    "height": 440,
    "margin": {"l": 70, "r": 20, "t": 44, "b": 50},
    "hovermode": "closest",
    "legend": {"orientation": "h", "x": 0, "y": -0.18, "yanchor": "top", "font": {"size": 11}},
    "paper_bgcolor": "#fff",
    "plot_bgcolor": "#fff",
}


def _spec(fig: Any) -> dict[str, Any]:
    d = fig.to_plotly_json()
    return {"data": d.get("data", []), "layout": d.get("layout", {})}


def _layout(title: str, x_title: str, y_title: str, **kw: Any) -> dict[str, Any]:
    lay = {
        **BASE_LAYOUT,
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
        "xaxis": {**AXIS, "title": {"text": x_title}},
        "yaxis": {**AXIS, "title": {"text": y_title}},
    }
    for k, v in kw.items():
        if k in ("xaxis", "yaxis"):
            lay[k] = {**lay[k], **v}
        else:
            lay[k] = v
    return lay


def _hline(y: float, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    shape = {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y,
             "line": {"color": THRESH, "width": 1.2, "dash": "dash"}, "name": "threshold"}  # fmt: skip
    note = {"xref": "paper", "x": 1, "xanchor": "right", "yref": "y", "y": y, "yanchor": "bottom",
            "text": label, "showarrow": False, "font": {"size": 10, "color": THRESH}}  # fmt: skip
    return shape, note


def _threshold(limit: float | None, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if limit is None:
        return [], []
    shape, note = _hline(limit, f"{name} {limit:g}")
    return [shape], [note]


def _finite(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _one_minus(v: float) -> float:
    return max(1.0 - v, FLOOR) if _finite(v) else math.nan


def _ident(v: float) -> float:
    return v if _finite(v) else math.nan


def _tok_label(report: Report, j: int) -> str:
    ts = report.token_strings()
    return f"{j}: {ts[j]!s}" if j < len(ts) else str(j)


# --------------------------------------------------------------------------- depth plots


def depth_plots(report: Report) -> dict[str, dict[str, Any]]:
    import plotly.graph_objects as go

    cmp = report.comparison
    layers = cmp.layers()
    if not layers:
        return {}
    t = cmp.thresholds
    res_names = {i: cmp.residual_point(i) for i in layers}
    ops = [o for o in dict.fromkeys(r.op for r in cmp.points.values() if r.layer is not None) if o != "out"]

    def figure(
        fid: str, title: str, metric: str, y_title: str, transform: Callable[[float], float], log: bool,
        threshold: float | None, thr_label: str, worst_high: bool, hover: str,
    ) -> dict[str, Any]:  # fmt: skip
        fig = go.Figure()
        xs: list[float] = [float(i) for i in layers]
        pts = [cmp.points[res_names[i]] for i in layers]  # type: ignore[index]
        if "embed" in cmp.points:
            xs, pts = [-1.0] + xs, [cmp.points["embed"]] + pts
        raw = [getattr(p, metric) for p in pts]
        fig.add_trace(go.Scatter(
            x=xs, y=[transform(v) for v in raw], name="residual (layers.*.out)", mode="lines+markers",
            line={"color": "#000", "width": 2.6}, marker={"size": 6},
            customdata=[[int(x), p.point, fmt_hover(v), p.worst_token] for x, p, v in zip(xs, pts, raw)],
            hovertemplate=hover,
        ))  # fmt: skip
        per_op = []
        for op in ops:
            rs = [r for r in cmp.points.values() if r.op == op and r.layer is not None]
            vals = [getattr(r, metric) for r in rs]
            finite = [v for v in vals if _finite(v)]
            worst = (max(finite) if worst_high else -min(finite)) if finite else -math.inf
            if any(not _finite(v) for v in vals):
                worst = math.inf
            per_op.append((worst, op, rs, vals))
        shown = {op for _, op, _, _ in sorted(per_op, key=lambda x: -x[0])[:3]}
        for k, (_, op, rs, vals) in enumerate(per_op):
            fig.add_trace(go.Scatter(
                x=[r.layer for r in rs], y=[transform(v) for v in vals], name=op, mode="lines+markers",
                line={"color": PALETTE[k % len(PALETTE)], "width": 1.2}, marker={"size": 4},
                visible=True if op in shown else "legendonly",
                customdata=[[r.layer, r.point, fmt_hover(v), r.worst_token] for r, v in zip(rs, vals)],
                hovertemplate=hover,
            ))  # fmt: skip
        bad = [p for p in cmp.points.values() if not _finite(getattr(p, metric)) and p.cand_nonfinite]
        if bad:
            fig.add_trace(go.Scatter(
                x=[p.layer if p.layer is not None else -1 for p in bad], y=[1.0] * len(bad), yaxis="y2",
                name="non-finite", mode="markers", marker={"symbol": "x", "size": 11, "color": BAD},
                customdata=[[p.layer if p.layer is not None else -1, p.point, "non-finite", p.worst_token]
                            for p in bad],
                hovertemplate="<b>%{customdata[1]}</b><br>non-finite values in the candidate<extra></extra>",
            ))  # fmt: skip
        shapes, notes = [], []
        if threshold is not None:
            s, n = _hline(transform(threshold) if metric == "min_cosine" else threshold, thr_label)
            shapes, notes = [s], [n]
        ticks = ([-1] if "embed" in cmp.points else []) + layers[:: max(1, math.ceil(len(layers) / 24))]
        fig.update_layout(_layout(
            title, "layer", y_title,
            xaxis={"tickmode": "array", "tickvals": ticks, "ticktext": ["embed" if v < 0 else str(v) for v in ticks],
                   "tickangle": 0},
            yaxis={"type": "log" if log else "linear", "exponentformat": "power"},
            yaxis2={"overlaying": "y", "range": [0, 1.05], "visible": False, "fixedrange": True},
            shapes=shapes, annotations=notes,
        ))  # fmt: skip
        return {fid: _spec(fig)}

    hover = ("<b>%{customdata[1]}</b><br>{label} %{customdata[2]}<br>worst token %{customdata[3]}"
             "<extra>%{fullData.name}</extra>")  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    norm = [v for p in cmp.points.values() for v in (p.max_norm_ratio,) if _finite(v) and v > 0]
    wide = bool(norm) and max(norm) / min(norm) > 20
    out |= figure("plot-cosine", "Cosine similarity vs depth (worst token; 1 − cosine, log)", "min_cosine",
                  "1 − cosine", _one_minus, True, t.min_cosine, f"min_cosine {fmt_hover(t.min_cosine)}", False,
                  hover.replace("{label}", "cosine"))  # fmt: skip
    out |= figure("plot-norm-ratio", "Norm ratio ‖cand‖/‖ref‖ vs depth (worst token)", "max_norm_ratio",
                  "norm ratio", _ident, wide, t.max_norm_ratio, f"max_norm_ratio {fmt_hover(t.max_norm_ratio)}",
                  True, hover.replace("{label}", "norm ratio"))  # fmt: skip
    out |= figure("plot-rel-l2", "Relative error ‖c − r‖/‖r‖ vs depth (worst token, log)", "max_rel_l2",
                  "relative L2 error", lambda v: max(v, FLOOR) if _finite(v) else math.nan, True, t.max_rel_l2,
                  f"max_rel_l2 {fmt_hover(t.max_rel_l2)}", True, hover.replace("{label}", "rel err"))  # fmt: skip
    return out


def local_plot(report: Report) -> dict[str, dict[str, Any]]:
    import plotly.graph_objects as go

    loc = report.record.localization
    if loc is None or not loc.layers:
        return {}
    fig = go.Figure()
    xs = [r.layer for r in loc.layers]
    for name, vals, color, dash in (
        ("local (layer on the reference's input)", [r.local_rel_l2 for r in loc.layers], CAND, "solid"),
        ("accumulated (normal run)", [r.accumulated_rel_l2 for r in loc.layers], "#000", "dot"),
    ):
        fig.add_trace(go.Scatter(
            x=xs, y=[max(v, FLOOR) if _finite(v) else None for v in vals], name=name, mode="lines+markers",
            line={"color": color, "width": 2, "dash": dash},
            customdata=[[r.layer, f"layers.{r.layer}", fmt_hover(v), r.worst_local_op or "-", r.verdict or "-"]
                        for r, v in zip(loc.layers, vals)],
            hovertemplate="<b>layer %{customdata[0]}</b><br>rel err %{customdata[2]}<br>worst local op "
                          "%{customdata[3]}<br>%{customdata[4]}<extra>%{fullData.name}</extra>",
        ))  # fmt: skip
    fig.update_layout(_layout("Local vs accumulated relative error per layer (activation patching)", "layer",
                              "relative L2 error", yaxis={"type": "log", "exponentformat": "power"}))  # fmt: skip
    return {"plot-local": _spec(fig)}


# --------------------------------------------------------------------------- heat maps


def _heat_z(cos: float) -> float:
    if not _finite(cos):
        return 0.0  # non-finite: the worst colour
    return max(math.log10(max(1.0 - cos, 10**HEAT_MIN_LOG)), HEAT_MIN_LOG)


def _z_range(z: list[list[float | None]]) -> tuple[float, float]:
    """The decades the bulk of the data spans (5th percentile up; at least two decades): contrast where the cells are.

    Cells below the range take its lightest colour (the colour bar says "≤"); hover gives every exact value.
    """
    vals = sorted(v for row in z for v in row if v is not None)
    if not vals:
        return HEAT_MIN_LOG, 0.0
    lo, hi = math.floor(vals[len(vals) // 20]), math.ceil(vals[-1])
    lo = max(min(lo, hi - 2), HEAT_MIN_LOG)
    return float(lo), float(min(max(hi, lo + 2), 0))


def _colorbar(lo: float, hi: float) -> dict[str, Any]:
    vals = list(range(int(lo), int(hi) + 1))
    text = [f"1e{v}" if v else "1" for v in vals]
    text[0] = "≤" + text[0]
    return {"title": {"text": "1 − cos"}, "tickvals": vals, "ticktext": text}


def heatmap_ops(report: Report) -> dict[str, dict[str, Any]]:
    """Layers × ops: the worst-token cosine of every capture point in a layer."""
    import plotly.graph_objects as go

    cmp = report.comparison
    layers = cmp.layers()
    if not layers:
        return {}
    ops = list(dict.fromkeys(r.op for r in cmp.points.values() if r.layer is not None))
    by = {(r.layer, r.op): r for r in cmp.points.values() if r.layer is not None}
    z, custom = [], []
    for i in layers:
        zr, cr = [], []
        for op in ops:
            r = by.get((i, op))
            if r is None:
                zr.append(None)
                cr.append([i, "", "", "", "", ""])
                continue
            nf = f"{r.cand_nonfinite} non-finite" if r.cand_nonfinite else "finite"
            zr.append(_heat_z(r.min_cosine) if r.full or r.cand_nonfinite else None)
            cr.append([i, r.point, fmt_hover(r.min_cosine), fmt_hover(r.max_rel_l2), fmt_hover(r.max_norm_ratio), nf])
        z.append(zr)
        custom.append(cr)
    lo, hi = _z_range(z)
    fig = go.Figure(go.Heatmap(
        z=z, x=ops, y=layers, customdata=custom, colorscale="YlOrRd", zmin=lo, zmax=hi,
        colorbar=_colorbar(lo, hi), hoverongaps=False, xgap=1, ygap=1,
        hovertemplate="<b>%{customdata[1]}</b><br>min cosine %{customdata[2]}<br>max rel err %{customdata[3]}"
                      "<br>max norm ratio %{customdata[4]}<br>%{customdata[5]}<extra></extra>",
    ))  # fmt: skip
    fig.update_layout(_layout(
        "Layers × ops: worst-token cosine of every capture point (1 − cosine, log colour)", "op (execution order)",
        "layer", height=max(320, 22 * len(layers) + 140), margin={"l": 70, "r": 20, "t": 44, "b": 110},
        yaxis={"autorange": "reversed", "dtick": 1, "showgrid": False},
        xaxis={"tickangle": -40, "showgrid": False},
    ))  # fmt: skip
    return {"heatmap-ops": _spec(fig)}


def heatmap_tokens(report: Report) -> dict[str, dict[str, Any]]:
    """Layers × tokens: per-token cosine of the residual stream after each layer."""
    import plotly.graph_objects as go

    cmp = report.comparison
    names = {cmp.residual_point(i): i for i in cmp.layers()}
    sub = cmp.df[cmp.df["point"].isin([n for n in names if n])]
    if sub.empty:
        return {}
    layers = sorted({names[p] for p in sub["point"].unique()})
    cols = sorted(int(j) for j in sub["token_index"].unique())
    cell = {(names[p], int(j)): (c, r, n) for p, j, c, r, n in
            zip(sub["point"], sub["token_index"], sub["cosine"], sub["rel_l2"], sub["norm_ratio"])}  # fmt: skip
    z, custom = [], []
    for i in layers:
        zr, cr = [], []
        for j in cols:
            c, r, n = cell.get((i, j), (math.nan, math.nan, math.nan))
            zr.append(_heat_z(float(c)))
            cr.append([i, _tok_label(report, j), fmt_hover(float(c)), fmt_hover(float(r)), fmt_hover(float(n))])
        z.append(zr)
        custom.append(cr)
    n_prompt = report.record.tokens.n_prompt if report.record.tokens is not None else None
    x_labels = [_tok_label(report, j) for j in cols]
    lo, hi = _z_range(z)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(len(cols))), y=layers, customdata=custom, colorscale="YlOrRd", zmin=lo,
        zmax=hi, colorbar=_colorbar(lo, hi), xgap=1, ygap=1,
        hovertemplate="<b>layer %{customdata[0]}</b> · token %{customdata[1]}<br>cosine %{customdata[2]}"
                      "<br>rel err %{customdata[3]}<br>norm ratio %{customdata[4]}<extra></extra>",
    ))  # fmt: skip
    shapes = []
    if n_prompt and 0 < n_prompt < len(cols):
        shapes.append({"type": "line", "xref": "x", "x0": n_prompt - 0.5, "x1": n_prompt - 0.5, "yref": "paper",
                       "y0": 0, "y1": 1, "line": {"color": "#333", "width": 1.5, "dash": "dot"}})  # fmt: skip
    fig.update_layout(_layout(
        "Layers × tokens: residual-stream cosine per token (1 − cosine, log colour; dotted: end of prompt)",
        "token", "layer", height=max(320, 22 * len(layers) + 140), margin={"l": 70, "r": 20, "t": 44, "b": 110},
        yaxis={"autorange": "reversed", "dtick": 1, "showgrid": False},
        xaxis={"tickmode": "array", "tickvals": list(range(len(cols))), "ticktext": x_labels, "tickangle": -40,
               "showgrid": False},
        shapes=shapes,
    ))  # fmt: skip
    return {"heatmap-tokens": _spec(fig)}


# --------------------------------------------------------------------------- softcap and logits


def saturation_plots(report: Report) -> dict[str, dict[str, Any]]:
    import plotly.graph_objects as go

    cmp = report.comparison
    out: dict[str, dict[str, Any]] = {}
    limit = cmp.thresholds.max_saturation
    final = [s for s in cmp.saturation if s.kind == "final"]
    if final:
        s = final[0]
        cats = [_tok_label(report, j) for j in cmp.positions]
        fig = go.Figure()
        for name, vals, color in (("reference", s.ref_token_share, REF), ("candidate", s.cand_token_share, CAND)):
            fig.add_trace(go.Bar(x=cats, y=list(vals), name=name, marker_color=color,
                                 hovertemplate="token %{x}<br>share at the wall %{y:.4g}<extra>%{fullData.name}"
                                               "</extra>"))  # fmt: skip
        shapes, notes = _threshold(limit, "max_saturation")
        fig.update_layout(_layout(f"Final softcap saturation per token (share of vocab at |y| ≥ 0.99·{s.cap:g})",
                                  "token", "share at the wall", barmode="group", shapes=shapes,
                                  annotations=notes, xaxis={"tickangle": -40},
                                  margin={"l": 70, "r": 20, "t": 44, "b": 150}))  # fmt: skip
        out["plot-saturation"] = _spec(fig)
    attn = [s for s in cmp.saturation if s.kind == "attention"]
    if attn:
        xs = [s.layer if s.layer is not None else k for k, s in enumerate(attn)]
        fig = go.Figure()
        for name, vals, color in (("reference", [s.ref_share for s in attn], REF),
                                  ("candidate", [s.cand_share for s in attn], CAND)):  # fmt: skip
            fig.add_trace(go.Scatter(x=xs, y=vals, name=name, mode="lines+markers", line={"color": color},
                                     customdata=[[x] for x in xs],
                                     hovertemplate="layer %{x}<br>share at the wall %{y:.4g}<extra>"
                                                   "%{fullData.name}</extra>"))  # fmt: skip
        fig.update_layout(_layout("Attention softcap saturation vs depth", "layer", "share at the wall"))
        out["plot-attn-saturation"] = _spec(fig)
    return out


def logits_plot(report: Report) -> dict[str, dict[str, Any]]:
    import plotly.graph_objects as go

    cmp = report.comparison
    df = cmp.logits_df
    if cmp.logits is None or df.empty:
        return {}
    cats = [_tok_label(report, int(j)) for j in df["token_index"]]
    agree = [bool(a) for a in df["top1_agree"]]
    fig = go.Figure(go.Bar(
        x=cats, y=[float(k) if _finite(float(k)) else None for k in df["kl"]], name="KL(ref‖cand)",
        marker_color=[REF if a else CAND for a in agree],
        customdata=[[fmt_hover(float(k)), "yes" if a else "no", int(ra), int(ca), float(t5)]
                    for k, a, ra, ca, t5 in zip(df["kl"], agree, df["ref_argmax"], df["cand_argmax"],
                                                df["top5_overlap"])],
        hovertemplate="token %{x}<br>KL %{customdata[0]} nats<br>top-1 agree %{customdata[1]} "
                      "(ref %{customdata[2]}, cand %{customdata[3]})<br>top-5 overlap %{customdata[4]:.2f}"
                      "<extra></extra>",
    ))  # fmt: skip
    limit = cmp.thresholds.max_kl
    shapes, notes = _threshold(limit, "max_kl")
    fig.update_layout(_layout("Logits: KL(ref‖cand) per position (red: top-1 differs)", "position (next token "
                              "predicted after it)", "KL (nats)", shapes=shapes, annotations=notes,
                              xaxis={"tickangle": -40}, showlegend=False, height=400,
                              margin={"l": 70, "r": 20, "t": 44, "b": 120}))  # fmt: skip
    return {"plot-logits": _spec(fig)}


def fmt_hover(v: Any) -> str:
    from layerbisect.reports.common import fmt

    return fmt(v, 6) if isinstance(v, float) else fmt(v)


def all_figures(report: Report) -> dict[str, dict[str, dict[str, Any]]]:
    """Figure groups for the page: group name → figure id → spec."""
    return {
        "depth": {**depth_plots(report), **local_plot(report)},
        "heatmaps": {**heatmap_ops(report), **heatmap_tokens(report)},
        "saturation": saturation_plots(report),
        "logits": logits_plot(report),
    }


__all__ = ["all_figures", "depth_plots", "heatmap_ops", "heatmap_tokens", "logits_plot", "saturation_plots"]
