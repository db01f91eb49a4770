"""Self-contained HTML report: one file, inline CSS and inline SVG, nothing fetched.

It must open from a CI artifact on an air-gapped machine, so there is no JavaScript, no
CDN and no web font; plots are SVG generated in ``svg.py`` with ``<title>`` tooltips.
Order on the page: verdict, findings, plots (cosine / norm ratio / relative error vs
depth, residual stream and per op; softcap saturation; per-token heat map), per-layer
table, logits, continuations, extra sections, run metadata, all points.

Plot element ids (stable, tests and users rely on them): ``plot-cosine``,
``plot-norm-ratio``, ``plot-rel-l2``, ``plot-saturation``, ``plot-attn-saturation``,
``heatmap-residual-cosine``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from layerbisect.reports import svg
from layerbisect.reports.common import (
    LAYER_COLUMNS,
    SEVERITY_LABEL,
    cell,
    continuations,
    fmt,
    layer_rows,
    meta_rows,
    verdict,
)

if TYPE_CHECKING:
    from layerbisect.comparison.gate import GateResult
    from layerbisect.comparison.report import Report

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#1d1d1f;background:#fff;padding:0 16px;line-height:1.4}
h1{font-size:1.5em;margin-bottom:4px}
h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
.verdict{color:#555;margin-bottom:16px}
.finding{border-left:6px solid #999;background:#f7f7f9;padding:8px 12px;margin:8px 0;border-radius:3px}
.finding.critical{border-color:#b00020;background:#fdecef}.finding.error{border-color:#e65100;background:#fff3e0}
.finding.warning{border-color:#c9a300;background:#fffbe6}.finding.info{border-color:#1565c0;background:#eef5fd}
.sev{font-weight:700;font-size:.8em;letter-spacing:.05em;margin-right:6px}
.critical .sev{color:#b00020}.error .sev{color:#e65100}.warning .sev{color:#8a6d00}.info .sev{color:#1565c0}
.kind{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;color:#555;margin-right:6px}
.where{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;color:#333}
.detail{margin-top:4px}.evidence{margin-top:4px;font-size:.8em;color:#555;font-family:ui-monospace,Menlo,monospace;
word-break:break-all}
table{border-collapse:collapse;margin:8px 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f2f2f4}
td.l,th.l{text-align:left}tr.fail td{background:#fdecef}
.plots{display:flex;flex-wrap:wrap;gap:12px}
svg.plot{background:#fff;border:1px solid #e2e2e2;border-radius:4px}
svg .ptitle{font-size:13px;font-weight:600;fill:#222}svg .tick{font-size:10px;fill:#555}
svg .axis{font-size:11px;fill:#333}svg .legend{font-size:10px;fill:#333}
svg .frame{fill:none;stroke:#bbb}svg .grid{stroke:#eee}svg .hline{stroke:#b00020;stroke-dasharray:5 4}
svg .bad{fill:#b00020;font-size:12px;font-weight:700}
.cont{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.cont div{background:#f7f7f9;padding:8px;border-radius:4px;white-space:pre-wrap;font-family:ui-monospace,monospace;
font-size:.85em}
.gate-pass{color:#1b5e20;font-weight:700}.gate-fail{color:#b00020;font-weight:700}
pre{background:#f7f7f9;padding:8px;white-space:pre-wrap}
""".strip()


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 1, fails: Sequence[bool] = ()) -> str:
    out = ["<table><thead><tr>"]
    out += [f'<th class="{"l" if i < left else ""}">{escape(str(h))}</th>' for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for k, r in enumerate(rows):
        cls = ' class="fail"' if k < len(fails) and fails[k] else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td class="{"l" if i < left else ""}">{escape(str(c))}</td>' for i, c in enumerate(r)
        ) + "</tr>")  # fmt: skip
    out.append("</tbody></table>")
    return "".join(out)


def _findings(report: Report) -> str:
    fs = report.findings
    if not fs:
        return '<p id="findings-none">No findings: every compared point is within the thresholds.</p>'
    out = []
    for f in fs:
        ev = ""
        if f.evidence:
            from layerbisect.reports.common import finding_evidence_text

            ev = f'<div class="evidence">{escape(finding_evidence_text(f.evidence, limit=10))}</div>'
        where = f'<span class="where">@ {escape(f.where())}</span>' if f.where() else ""
        out.append(
            f'<div class="finding {escape(f.severity)}" data-kind="{escape(f.kind)}">'
            f'<span class="sev">{SEVERITY_LABEL.get(f.severity, f.severity.upper())}</span>'
            f'<span class="kind">{escape(f.kind)}</span><strong>{escape(f.title)}</strong> {where}'
            f'<div class="detail">{escape(f.detail)}</div>{ev}</div>'
        )
    return "\n".join(out)


def _depth_plots(report: Report) -> list[str]:
    cmp = report.comparison
    layers = cmp.layers()
    if not layers:
        return []
    t = cmp.thresholds
    res_names = {i: cmp.residual_point(i) for i in layers}
    ops = list(dict.fromkeys(r.op for r in cmp.points.values() if r.layer is not None))

    def series(metric: str, transform: Any = lambda v: v) -> list[svg.Series]:
        out = []
        xs = [float(i) for i in layers]
        ys = [transform(getattr(cmp.points[res_names[i]], metric)) for i in layers]
        if "embed" in cmp.points:
            xs, ys = [-1.0] + xs, [transform(getattr(cmp.points["embed"], metric))] + ys
        out.append(svg.Series("residual (layers.*.out)", xs, ys, color="#000000", width=2.6))
        for k, op in enumerate(o for o in ops if o != "out"):
            pts = [(float(r.layer), transform(getattr(r, metric))) for r in cmp.points.values()
                   if r.op == op and r.layer is not None]  # fmt: skip
            if pts:
                out.append(
                    svg.Series(op, [p[0] for p in pts], [p[1] for p in pts], color=svg.PALETTE[k % len(svg.PALETTE)],
                               width=1.0, dashed=True)
                )  # fmt: skip
        return out

    ticks = [(-1.0, "embed")] if "embed" in cmp.points else []
    step = max(1, math.ceil(len(layers) / 16))
    ticks += [(float(i), str(i)) for i in layers[::step]]

    def one_minus(v: float) -> float:
        return 1.0 - v if math.isfinite(v) else math.nan

    cos_t = 1.0 - t.min_cosine if t.min_cosine is not None else None
    return [
        svg.line_plot(
            "plot-cosine",
            "Cosine similarity vs depth (worst token; shown as 1 − cosine, log)",
            series("min_cosine", one_minus),
            y_label="1 − cosine",
            log_y=True,
            hline=cos_t,
            hline_label="1 − min_cosine",
            x_ticks=ticks,
        ),
        svg.line_plot(
            "plot-norm-ratio",
            "Norm ratio ‖cand‖/‖ref‖ vs depth (worst token)",
            series("max_norm_ratio"),
            y_label="norm ratio",
            log_y=_wide(series("max_norm_ratio")),
            hline=t.max_norm_ratio,
            hline_label="max_norm_ratio",
            x_ticks=ticks,
        ),
        svg.line_plot(
            "plot-rel-l2",
            "Relative error ‖c − r‖/‖r‖ vs depth (worst token, log)",
            series("max_rel_l2"),
            y_label="relative L2 error",
            log_y=True,
            hline=t.max_rel_l2,
            hline_label="max_rel_l2",
            x_ticks=ticks,
        ),
    ]


def _wide(series: Sequence[svg.Series]) -> bool:
    ys = [y for s in series for y in s.ys if math.isfinite(y) and y > 0]
    return bool(ys) and max(ys) / min(ys) > 20


def _saturation_plots(report: Report) -> list[str]:
    cmp = report.comparison
    out = []
    final = [s for s in cmp.saturation if s.kind == "final"]
    tok = report.token_strings()
    if final:
        s = final[0]
        cats = [tok[i] if i < len(tok) else str(i) for i in cmp.positions]
        out.append(
            svg.bar_plot(
                "plot-saturation",
                f"Final softcap saturation per token (share at |y| ≥ 0.99·{s.cap:g})",
                cats,
                [("reference", s.ref_token_share, "#1f77b4"), ("candidate", s.cand_token_share, "#d62728")],
                y_label="share of vocab at the wall",
                hline=cmp.thresholds.max_saturation,
            )
        )
    attn = [s for s in cmp.saturation if s.kind == "attention"]
    if attn:
        xs = [float(s.layer if s.layer is not None else k) for k, s in enumerate(attn)]
        out.append(
            svg.line_plot(
                "plot-attn-saturation",
                "Attention softcap saturation vs depth",
                [
                    svg.Series("reference", xs, [s.ref_share for s in attn], color="#1f77b4", width=2),
                    svg.Series("candidate", xs, [s.cand_share for s in attn], color="#d62728", width=2),
                ],
                y_label="share at the wall",
                hline=cmp.thresholds.max_saturation,
            )
        )
    return out


def _heatmap(report: Report) -> str:
    grid = report.comparison.residual_cosine_grid()
    if grid.empty:
        return ""
    tok = report.token_strings()
    cols = [f"{j}:{tok[j]}" if j < len(tok) else str(j) for j in grid.columns]
    rows = [f"layer {i}" for i in grid.index]
    vals = [[float(v) for v in row] for row in grid.to_numpy()]
    return svg.heatmap("heatmap-residual-cosine", "Residual cosine per layer × token", rows, cols, vals)


def _cont_box(label: str, text: str, ids: Sequence[int]) -> str:
    return f"<div><strong>{label}</strong>\n{escape(text)}\n\nids: {escape(' '.join(map(str, ids)))}</div>"


def _gate(gate: GateResult) -> str:
    if gate.passed:
        return f'<p class="gate-pass" id="gate">Gate passed ({gate.checked} checks).</p>'
    items = "".join(f"<li>{escape(f)}</li>" for f in gate.failures[:200])
    head = f"Gate failed: {len(gate.failures)} of {gate.checked} checks."
    return f'<p class="gate-fail" id="gate">{head}</p><ul>{items}</ul>'


def render(report: Report, gate: GateResult | None = None) -> str:
    cmp = report.comparison
    title = "layerbisect report"
    if "ref_model" in report.meta or "cand_model" in report.meta:
        title += f": {report.meta.get('ref_model', 'reference')} vs {report.meta.get('cand_model', 'candidate')}"
    body = [f"<h1>{escape(title)}</h1>", f'<div class="verdict">{escape(verdict(report))}</div>']
    body += ['<h2 id="findings">Findings</h2>', _findings(report)]
    if gate is not None:
        body += ["<h2>Gate</h2>", _gate(gate)]

    plots = _depth_plots(report)
    if plots:
        body += ['<h2 id="plots">Divergence vs depth</h2>', '<div class="plots">', *plots, "</div>"]
    sat = _saturation_plots(report)
    if sat:
        body += ['<h2 id="saturation">Softcap saturation</h2>', '<div class="plots">', *sat, "</div>"]
        body.append(
            _table(
                ["point", "softcap", "cap", "ref share", "cand share", "ref max |pre|", "cand max |pre|"],
                [
                    [
                        s.point,
                        s.kind,
                        fmt(s.cap),
                        fmt(s.ref_share),
                        fmt(s.cand_share),
                        fmt(s.ref_max_pre),
                        fmt(s.cand_max_pre),
                    ]
                    for s in cmp.saturation
                ],
                left=2,
                fails=[not s for s in cmp.saturation],
            )  # fmt: skip
        )
    hm = _heatmap(report)
    if hm:
        body += ['<h2 id="heatmap">Per-token residual cosine</h2>', hm]

    rows = layer_rows(report)
    if rows:
        lt = cmp.layer_table()
        body += [
            '<h2 id="layers">Per layer (residual stream)</h2>',
            _table([h for _, h in LAYER_COLUMNS], rows, left=0, fails=[not p for p in lt["passed"].tolist()]),
        ]
    if cmp.logits is not None:
        lg = cmp.logits
        body += [
            '<h2 id="logits">Logits</h2>',
            _table(
                ["mean KL (nats)", "max KL", "worst token", "top-1 agreement", "top-5 overlap", "first top-1 miss"],
                [
                    [
                        fmt(lg.mean_kl),
                        fmt(lg.max_kl),
                        fmt(lg.worst_kl_token),
                        fmt(lg.top1_agreement),
                        fmt(lg.mean_top5_overlap),
                        fmt(lg.first_top1_mismatch),
                    ]
                ],
                left=0,
                fails=[not lg],
            ),  # fmt: skip
        ]
    cont = continuations(report)
    if cont is not None:
        d = cont.first_difference
        body += [
            '<h2 id="continuations">Greedy continuations</h2>',
            '<div class="cont">'
            + _cont_box("reference", cont.ref_text, cont.ref_ids)
            + _cont_box("candidate", cont.cand_text, cont.cand_ids)
            + "</div>",
            f"<p>{'Identical.' if d is None else f'First differing generated token: #{d}.'}</p>",
        ]
    for s in report.extra_sections:
        body.append(f'<h2 class="extra">{escape(s.title)}</h2>')
        if s.note:
            body.append(f"<p>{escape(s.note)}</p>")
        rws = s.rows()
        if rws is None:
            body.append(f"<pre>{escape(s.text())}</pre>")
        elif rws:
            headers = list(dict.fromkeys(k for r in rws for k in r))
            body.append(_table(headers, [[cell(r.get(h)) for h in headers] for r in rws]))
    body += ['<h2 id="run">Run</h2>', _table(["", ""], meta_rows(report), left=2)]
    if cmp.points:
        body += [
            "<details><summary>All points</summary>",
            _table(
                ["point", "min cos", "max rel_l2", "max norm ratio", "min SQNR dB", "non-finite ref/cand"],
                [
                    [
                        r.point,
                        fmt(r.min_cosine),
                        fmt(r.max_rel_l2),
                        fmt(r.max_norm_ratio),
                        fmt(r.min_sqnr_db),
                        f"{r.ref_nonfinite}/{r.cand_nonfinite}",
                    ]
                    for r in cmp.points.values()
                ],
                fails=[not r for r in cmp.points.values()],
            ),  # fmt: skip
            "</details>",
        ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
