"""Inline SVG plots generated in Python: no JavaScript, no CDN, no fonts to fetch.

Three shapes are enough for the report: a line plot over depth (several series, optional
log y axis, a threshold line), a heat map (layers × tokens) and a grouped bar chart
(per-token softcap saturation, reference vs candidate). Every data point carries a
``<title>`` so hovering in a browser shows the exact value. Non-finite values are drawn as
red crosses on the top edge instead of disappearing from the plot: a NaN is the most
important thing on the page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
)  # fmt: skip
W, H = 720, 320
ML, MR, MT, MB = 64, 170, 34, 44  # margins: the legend lives in the right margin


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = ""
    width: float = 1.2
    dashed: bool = False
    markers: bool = True


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}"
    return f"{v:.3g}"


def _linear_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-12 * abs(hi):
        out.append(round(v, 12))
        v += step
    return out


def line_plot(
    plot_id: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "layer",
    y_label: str = "",
    log_y: bool = False,
    hline: float | None = None,
    hline_label: str = "threshold",
    x_ticks: Sequence[tuple[float, str]] | None = None,
) -> str:
    xs_all = [x for s in series for x in s.xs]
    ys_fin = [y for s in series for y in s.ys if math.isfinite(y) and (y > 0 or not log_y)]
    if hline is not None and (hline > 0 or not log_y):
        ys_fin.append(hline)
    x0, x1 = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if ys_fin:
        y0, y1 = min(ys_fin), max(ys_fin)
    else:
        y0, y1 = (1e-6, 1.0) if log_y else (0.0, 1.0)
    if log_y:
        y0, y1 = math.log10(y0), math.log10(y1)
        y0, y1 = math.floor(y0), math.ceil(y1)
        if y1 == y0:
            y1 = y0 + 1
    else:
        pad = (y1 - y0) * 0.08 or abs(y1) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    pw, ph = W - ML - MR, H - MT - MB

    def px(x: float) -> float:
        return ML + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        v = math.log10(y) if log_y else y
        return MT + (1 - (v - y0) / (y1 - y0)) * ph

    out = [
        f'<svg id="{escape(plot_id)}" class="plot" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{ML}" y="20" class="ptitle">{escape(title)}</text>',
        f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" class="frame"/>',
    ]
    # y grid
    if log_y:
        ticks = [10.0**e for e in range(int(y0), int(y1) + 1)]
    else:
        ticks = _linear_ticks(y0, y1)
    for t in ticks:
        y = py(t)
        out.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{_num(y)}" y2="{_num(y)}" class="grid"/>')
        out.append(f'<text x="{ML - 6}" y="{_num(y + 4)}" class="tick" text-anchor="end">{_tick_label(t)}</text>')
    # x ticks: integers (layers) unless given
    if x_ticks is None:
        step = max(1, math.ceil((x1 - x0) / 16))
        x_ticks = [(float(x), str(int(x))) for x in range(math.ceil(x0), math.floor(x1) + 1, step)]
    for x, lab in x_ticks:
        out.append(
            f'<text x="{_num(px(x))}" y="{MT + ph + 16}" class="tick" text-anchor="middle">{escape(lab)}</text>'
        )
    out.append(f'<text x="{ML + pw / 2}" y="{H - 6}" class="axis" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="14" y="{MT + ph / 2}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 14 {MT + ph / 2})">{escape(y_label)}</text>'
    )
    if hline is not None and (hline > 0 or not log_y):
        y = py(hline)
        out.append(
            f'<line x1="{ML}" x2="{ML + pw}" y1="{_num(y)}" y2="{_num(y)}" class="hline">'
            f"<title>{escape(hline_label)} {hline:g}</title></line>"
        )
    for k, s in enumerate(series):
        color = s.color or PALETTE[k % len(PALETTE)]
        pts, seg, bad = [], [], []
        for x, y in zip(s.xs, s.ys, strict=False):
            if math.isfinite(y) and (y > 0 or not log_y):
                seg.append((px(x), py(y), x, y))
            else:
                if len(seg) > 0:
                    pts.append(seg)
                seg = []
                bad.append((px(x), x, y))
        if seg:
            pts.append(seg)
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        out.append(f'<g class="series" data-label="{escape(s.label)}">')
        for seg in pts:
            d = " ".join(f"{_num(a)},{_num(b)}" for a, b, _, _ in seg)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="{s.width}"{dash}/>')
            if s.markers:
                for a, b, x, y in seg:
                    out.append(
                        f'<circle cx="{_num(a)}" cy="{_num(b)}" r="2.4" fill="{color}">'
                        f"<title>{escape(s.label)} @ {x:g}: {y:.6g}</title></circle>"
                    )
        for a, x, y in bad:
            label = "nan" if math.isnan(y) else ("inf" if y > 0 else "≤0 / -inf")
            out.append(
                f'<text x="{_num(a)}" y="{MT + 10}" class="bad" text-anchor="middle">✕'
                f"<title>{escape(s.label)} @ {x:g}: {label}</title></text>"
            )
        out.append("</g>")
    # legend
    lx = W - MR + 12
    for k, s in enumerate(series[:18]):
        color = s.color or PALETTE[k % len(PALETTE)]
        y = MT + 6 + k * 14
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        out.append(
            f'<line x1="{lx}" x2="{lx + 16}" y1="{y}" y2="{y}" stroke="{color}" '
            f'stroke-width="{max(s.width, 1.5)}"{dash}/>'
        )
        out.append(f'<text x="{lx + 20}" y="{y + 4}" class="legend">{escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _heat_color(v: float, lo: float, hi: float) -> str:
    """White (good) → yellow → red (bad) on t ∈ [0, 1]."""
    if not math.isfinite(v):
        return "#3b0a45"
    t = 0.0 if hi <= lo else min(1.0, max(0.0, (v - lo) / (hi - lo)))
    if t < 0.5:
        u = t / 0.5
        r, g, b = 255, 255 - int(40 * u), 255 - int(200 * u)
    else:
        u = (t - 0.5) / 0.5
        r, g, b = 255 - int(40 * u), 215 - int(190 * u), 55 - int(30 * u)
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    plot_id: str,
    title: str,
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float]],
    *,
    value_label: str = "cosine",
) -> str:
    """Rows × columns of cosine; colour by log10(1 − cosine) from 1e-7 (white) to 1 (red); NaN dark purple."""
    n_r, n_c = len(rows), len(cols)
    cw = max(6.0, min(28.0, 620.0 / max(n_c, 1)))
    ch = max(8.0, min(22.0, 420.0 / max(n_r, 1)))
    left, top = 80, 34
    width = int(left + cw * n_c + 150)
    height = int(top + ch * n_r + 60)
    out = [
        f'<svg id="{escape(plot_id)}" class="plot heatmap" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="20" class="ptitle">{escape(title)}</text>',
    ]
    lo, hi = -7.0, 0.0
    for i, rlab in enumerate(rows):
        y = top + i * ch
        out.append(
            f'<text x="{left - 6}" y="{_num(y + ch * 0.7)}" class="tick" text-anchor="end">{escape(rlab)}</text>'
        )
        for j in range(n_c):
            v = values[i][j]
            dist = math.log10(max(1.0 - v, 1e-12)) if math.isfinite(v) else math.nan
            out.append(
                f'<rect x="{_num(left + j * cw)}" y="{_num(y)}" width="{_num(cw)}" height="{_num(ch)}" '
                f'fill="{_heat_color(dist, lo, hi)}"><title>{escape(rlab)}, token {escape(cols[j])}: '
                f"{value_label} {v:.7g}</title></rect>"
            )
    step = max(1, math.ceil(n_c / 24))
    for j in range(0, n_c, step):
        x = left + (j + 0.5) * cw
        out.append(
            f'<text x="{_num(x)}" y="{_num(top + n_r * ch + 12)}" class="tick" text-anchor="end" '
            f'transform="rotate(-45 {_num(x)} {_num(top + n_r * ch + 12)})">{escape(cols[j][:10])}</text>'
        )
    # colour legend
    lx = left + cw * n_c + 20
    for k in range(8):
        d = lo + (hi - lo) * k / 7
        out.append(f'<rect x="{lx}" y="{top + k * 14}" width="14" height="14" fill="{_heat_color(d, lo, hi)}"/>')
        out.append(f'<text x="{lx + 20}" y="{top + k * 14 + 11}" class="legend">1−cos 1e{int(round(d))}</text>')
    out.append(f'<rect x="{lx}" y="{top + 8 * 14 + 4}" width="14" height="14" fill="#3b0a45"/>')
    out.append(f'<text x="{lx + 20}" y="{top + 8 * 14 + 15}" class="legend">NaN / Inf</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_plot(
    plot_id: str,
    title: str,
    categories: Sequence[str],
    groups: Sequence[tuple[str, Sequence[float], str]],
    *,
    y_label: str = "",
    y_max: float | None = None,
    hline: float | None = None,
) -> str:
    """Grouped bars: categories on x, one bar per group (label, values, colour)."""
    vals = [v for _, vs, _ in groups for v in vs if math.isfinite(v)]
    top_v = y_max if y_max is not None else max(vals + [hline or 0.0, 1e-9]) * 1.1
    pw, ph = W - ML - MR, H - MT - MB
    n = max(len(categories), 1)
    gw = pw / n
    bw = max(1.0, gw * 0.8 / max(len(groups), 1))
    out = [
        f'<svg id="{escape(plot_id)}" class="plot" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{ML}" y="20" class="ptitle">{escape(title)}</text>',
        f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" class="frame"/>',
    ]
    for t in _linear_ticks(0.0, top_v):
        y = MT + (1 - t / top_v) * ph
        out.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{_num(y)}" y2="{_num(y)}" class="grid"/>')
        out.append(f'<text x="{ML - 6}" y="{_num(y + 4)}" class="tick" text-anchor="end">{_tick_label(t)}</text>')
    for g, (label, vs, color) in enumerate(groups):
        for j, v in enumerate(vs):
            x = ML + j * gw + gw * 0.1 + g * bw
            h = 0.0 if not math.isfinite(v) else min(v, top_v) / top_v * ph
            out.append(
                f'<rect x="{_num(x)}" y="{_num(MT + ph - h)}" width="{_num(bw)}" height="{_num(h)}" fill="{color}">'
                f"<title>{escape(label)}, {escape(categories[j])}: {v:.4g}</title></rect>"
            )
    step = max(1, math.ceil(n / 24))
    for j in range(0, len(categories), step):
        out.append(
            f'<text x="{_num(ML + (j + 0.5) * gw)}" y="{MT + ph + 16}" class="tick" '
            f'text-anchor="middle">{escape(categories[j][:8])}</text>'
        )
    if hline is not None:
        y = MT + (1 - min(hline, top_v) / top_v) * ph
        out.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{_num(y)}" y2="{_num(y)}" class="hline"/>')
    out.append(
        f'<text x="14" y="{MT + ph / 2}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 14 {MT + ph / 2})">{escape(y_label)}</text>'
    )
    lx = W - MR + 12
    for g, (label, _, color) in enumerate(groups):
        y = MT + 6 + g * 14
        out.append(f'<rect x="{lx}" y="{y - 5}" width="12" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 18}" y="{y + 4}" class="legend">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)
