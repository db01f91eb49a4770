"""Self-contained interactive HTML report: one file, plotly.js inlined, nothing fetched.

Design notes
- It must open from a CI artifact on an air-gapped machine: the plotly.js that ships inside
  the ``plotly`` Python package is inlined once (about 4.8 MB), the figures are JSON specs
  built in ``plots.py``, the CSS is inline, and there is no web font, CDN or image. The
  browser test (tests/reports/test_html_browser.py) checks that opening the page makes no
  request outside the file itself.
- plotly gives hover values, legend toggles (click a series to hide it, double-click to
  isolate it) and zoom (drag; double-click resets) on every figure.
- Clicking a finding, a heat-map cell or a point of a depth plot jumps to that layer: the
  URL fragment becomes ``#layer-N`` (the per-layer table's row, highlighted), and every
  depth plot and heat map marks the layer.
- Order on the page: verdict, findings, gate, divergence vs depth, heat maps (layers × ops,
  layers × tokens), per-layer table, logits, softcap saturation, continuations, sections
  (every row), run, all points.
- Element ids are stable (tests and users rely on them): the figure ids of ``plots.py``,
  ``findings``, ``layers`` (rows ``layer-N``), ``logits``, ``continuations``, ``run``,
  ``points``, and ``section-<key>`` for each section.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from layerbisect.comparison.sections import Section
from layerbisect.reports.common import (
    LAYER_COLUMNS,
    SEVERITY_LABEL,
    continuations,
    finding_evidence_text,
    fmt,
    fmt_cell,
    run_rows,
    title,
    verdict,
)

if TYPE_CHECKING:
    from layerbisect.comparison.gate import GateResult
    from layerbisect.comparison.report import Report

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
color:#1d1d1f;background:#fff;padding:0 16px 40px;line-height:1.4}
nav{position:sticky;top:0;background:#fffffff0;border-bottom:1px solid #ddd;padding:6px 0;z-index:10;font-size:.9em}
nav a{margin-right:14px;color:#1565c0;text-decoration:none}
h1{font-size:1.5em;margin:16px 0 4px}
h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px;scroll-margin-top:40px}
.verdict{color:#555;margin-bottom:8px}.sub{color:#555;font-size:.9em}
.finding{border-left:6px solid #999;background:#f7f7f9;padding:8px 12px;margin:8px 0;border-radius:3px}
.finding[data-layer]{cursor:pointer}.finding[data-layer]:hover{outline:1px solid #999}
.finding.critical{border-color:#b00020;background:#fdecef}.finding.error{border-color:#e65100;background:#fff3e0}
.finding.warning{border-color:#c9a300;background:#fffbe6}.finding.info{border-color:#1565c0;background:#eef5fd}
.sev{font-weight:700;font-size:.8em;letter-spacing:.05em;margin-right:6px}
.critical .sev{color:#b00020}.error .sev{color:#e65100}.warning .sev{color:#8a6d00}.info .sev{color:#1565c0}
.kind{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;color:#555;margin-right:6px}
.where{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;color:#333}
.jump{font-size:.85em;margin-left:8px;color:#6a1b9a}
.detail{margin-top:4px}.evidence{margin-top:4px;font-size:.8em;color:#555;font-family:ui-monospace,Menlo,monospace;
word-break:break-all}
table{border-collapse:collapse;margin:8px 0;font-size:.86em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}th{background:#f2f2f4;position:sticky;
top:34px}
td.l,th.l{text-align:left}td.t{text-align:left;white-space:normal;min-width:16em}tr.fail td{background:#fdecef}
tr.hl td,tr:target td{background:#ede7f6!important;font-weight:600}
.fig{border:1px solid #e2e2e2;border-radius:4px;margin:10px 0;min-height:300px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:10px}@media(max-width:1000px){.grid2{grid-template-columns:1fr}}
.cont{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.cont div{background:#f7f7f9;padding:8px;border-radius:4px;white-space:pre-wrap;font-family:ui-monospace,monospace;
font-size:.85em}
.gate-pass{color:#1b5e20;font-weight:700}.gate-fail{color:#b00020;font-weight:700}
details>summary{cursor:pointer;color:#1565c0;margin:6px 0}.note{color:#555;font-size:.88em}
""".strip()

PLOT_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["select2d", "lasso2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}

JS = """
(function () {
  var FIGS = __FIGS__, CONFIG = __CONFIG__, gds = {};
  function layerOf(p) {
    if (p.data.type === "heatmap") return p.y;
    if (Array.isArray(p.customdata) && typeof p.customdata[0] === "number") return p.customdata[0];
    return null;
  }
  function mark(id, layer) {
    var gd = gds[id], base = (gd.layout.shapes || []).filter(function (s) { return s.name !== "jump"; });
    var s = id.indexOf("heatmap") === 0
      ? {type: "rect", xref: "paper", x0: 0, x1: 1, yref: "y", y0: layer - 0.5, y1: layer + 0.5,
         line: {color: "#6a1b9a", width: 2.5}, name: "jump"}
      : {type: "line", xref: "x", x0: layer, x1: layer, yref: "paper", y0: 0, y1: 1,
         line: {color: "#6a1b9a", width: 2}, name: "jump"};
    return Plotly.relayout(gd, {shapes: base.concat([s])});
  }
  window.jumpToLayer = function (layer) {
    document.querySelectorAll("tr.hl").forEach(function (r) { r.classList.remove("hl"); });
    var row = document.getElementById("layer-" + layer);
    if (row) row.classList.add("hl");
    document.body.setAttribute("data-layer", String(layer));
    for (var id in gds) {
      if (/^(plot-(cosine|norm-ratio|rel-l2|local|attn-saturation)|heatmap-)/.test(id)) mark(id, layer);
    }
    if (location.hash !== "#layer-" + layer) location.hash = "layer-" + layer;
    else if (row) row.scrollIntoView({block: "center"});
  };
  Object.keys(FIGS).forEach(function (id) {
    var el = document.getElementById(id);
    if (!el) return;
    Plotly.newPlot(el, FIGS[id].data, FIGS[id].layout, CONFIG);
    gds[id] = el;
    el.on("plotly_click", function (ev) {
      var p = ev && ev.points && ev.points[0], layer = p ? layerOf(p) : null;
      if (typeof layer === "number" && layer >= 0) window.jumpToLayer(layer);
    });
  });
  document.querySelectorAll("[data-layer]").forEach(function (el) {
    if (el.tagName === "BODY") return;
    el.addEventListener("click", function (ev) {
      ev.preventDefault();
      window.jumpToLayer(+el.getAttribute("data-layer"));
    });
  });
  document.body.setAttribute("data-plots-ready", String(Object.keys(gds).length));
})();
"""


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    left: int = 1,
    fails: Sequence[bool] = (),
    row_ids: Sequence[str] = (),
    text_cols: Sequence[int] = (),
    table_id: str = "",
) -> str:
    def cls(i: int) -> str:
        return "t" if i in text_cols else ("l" if i < left else "")

    tid = f' id="{escape(table_id)}"' if table_id else ""
    out = [f"<table{tid}><thead><tr>"]
    out += [f'<th class="{"l" if (i < left or i in text_cols) else ""}">{escape(str(h))}</th>'
            for i, h in enumerate(headers)]  # fmt: skip
    out.append("</tr></thead><tbody>")
    for k, r in enumerate(rows):
        attrs = ' class="fail"' if k < len(fails) and fails[k] else ""
        if k < len(row_ids) and row_ids[k]:
            attrs += f' id="{escape(row_ids[k])}"'
        out.append(f"<tr{attrs}>" + "".join(f'<td class="{cls(i)}">{escape(str(c))}</td>' for i, c in enumerate(r))
                   + "</tr>")  # fmt: skip
    out.append("</tbody></table>")
    return "".join(out)


def _findings(report: Report) -> str:
    fs = report.findings
    if not fs:
        return '<p id="findings-none">No findings: every compared point is within the thresholds.</p>'
    out = []
    for f in fs:
        ev = finding_evidence_text(f.evidence, limit=10)
        ev_html = f'<div class="evidence">{escape(ev)}</div>' if ev else ""
        where = f'<span class="where">@ {escape(f.where())}</span>' if f.where() else ""
        layer = f' data-layer="{f.layer}"' if f.layer is not None else ""
        jump = f'<a class="jump" href="#layer-{f.layer}">→ layer {f.layer}</a>' if f.layer is not None else ""
        out.append(
            f'<div class="finding {escape(f.severity)}" data-kind="{escape(f.kind)}"{layer}>'
            f'<span class="sev">{SEVERITY_LABEL.get(f.severity, f.severity.upper())}</span>'
            f'<span class="kind">{escape(f.kind)}</span><strong>{escape(f.title)}</strong> {where}{jump}'
            f'<div class="detail">{escape(f.detail)}</div>{ev_html}</div>'
        )
    return "\n".join(out)


def _gate(gate: GateResult) -> str:
    if gate.passed:
        return f'<p class="gate-pass" id="gate">Gate passed ({gate.checked} checks).</p>'
    items = "".join(f"<li>{escape(f)}</li>" for f in gate.failures[:500])
    head = f"Gate failed: {len(gate.failures)} of {gate.checked} checks."
    return f'<p class="gate-fail" id="gate">{head}</p><details><summary>failures</summary><ul>{items}</ul></details>'


def _section(s: Section) -> str:
    out = [f'<h2 class="section" id="section-{escape(s.key)}">{escape(s.title)}</h2>']
    if s.text:
        out.append(f"<pre>{escape(s.text)}</pre>" if "\n" in s.text else f"<p>{escape(s.text)}</p>")
    if s.rows:
        cols = s.columns
        rows = [[fmt_cell(v, c) for v, c in zip(r, cols)] for r in s.rows]
        names = [i for i, c in enumerate(cols) if c.kind == "name"]
        texts = [i for i, c in enumerate(cols) if c.kind == "text" and c.key in ("note", "verdict", "detail")]
        tbl = _table([c.title for c in cols], rows, left=(max(names) + 1) if names else 0, text_cols=texts)
        if len(s.rows) > 40:
            tbl = f"<details><summary>{len(s.rows)} rows</summary>{tbl}</details>"
        out.append(tbl)
    if s.note:
        out.append(f'<p class="note">{escape(s.note)}</p>')
    return "\n".join(out)


def _figs(ids: Sequence[str], grid: bool = False) -> str:
    divs = "".join(f'<div class="fig" id="{escape(i)}"></div>' for i in ids)
    return f'<div class="grid2">{divs}</div>' if grid else divs


def _script_json(x: Any) -> str:
    from plotly.utils import PlotlyJSONEncoder

    s = json.dumps(x, cls=PlotlyJSONEncoder, ensure_ascii=False, sort_keys=True)
    # inside <script>: no "</script>" and no JS line separators can end the string early
    return s.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("</script", "<\\/script")


def render(report: Report, gate: GateResult | None = None) -> str:
    from layerbisect.reports import plots

    cmp = report.comparison
    figs = plots.all_figures(report)
    nav = [("findings", "Findings"), ("depth", "Depth"), ("heatmaps", "Heat maps"), ("layers", "Per layer"),
           ("logits", "Logits"), ("continuations", "Continuations"), ("sections", "Sections"), ("run", "Run"),
           ("points", "All points")]  # fmt: skip
    body = [
        "<nav>" + "".join(f'<a href="#{k}">{v}</a>' for k, v in nav) + "</nav>",
        f"<h1>{escape(title(report))}</h1>",
        f'<div class="verdict">{escape(verdict(report))}</div>',
        '<p class="sub">Hover for values; click a legend entry to hide a series (double-click: only that one); '
        "drag to zoom, double-click to reset. Click a finding, a heat-map cell or a plotted point to jump to its "
        "layer.</p>",
        '<h2 id="findings">Findings</h2>',
        _findings(report),
    ]
    if gate is not None:
        body += ["<h2>Gate</h2>", _gate(gate)]
    if figs["depth"]:
        body += ['<h2 id="depth">Divergence vs depth</h2>', _figs(list(figs["depth"]), grid=True)]
    if figs["heatmaps"]:
        body += ['<h2 id="heatmaps">Heat maps</h2>', _figs(list(figs["heatmaps"]))]

    lt = cmp.layer_table()
    if not lt.empty:
        recs = lt.to_dict(orient="records")
        rows = [[fmt(rec[k]) if k != "layer" else str(rec[k]) for k, _, _ in LAYER_COLUMNS] for rec in recs]
        body += [
            '<h2 id="layers">Per layer (residual stream)</h2>',
            _table([h for _, _, h in LAYER_COLUMNS], rows, left=0, fails=[not r["passed"] for r in recs],
                   row_ids=[f"layer-{r['layer']}" for r in recs], table_id="layer-table"),  # fmt: skip
        ]
    if cmp.logits is not None:
        lg = cmp.logits
        body += [
            '<h2 id="logits">Logits</h2>',
            _table(
                ["mean KL (nats)", "max KL", "worst token", "top-1 agreement", "top-5 overlap", "first top-1 miss"],
                [[fmt(lg.mean_kl), fmt(lg.max_kl), fmt(lg.worst_kl_token), fmt(lg.top1_agreement),
                  fmt(lg.mean_top5_overlap), fmt(lg.first_top1_mismatch)]],
                left=0, fails=[not lg],
            ),  # fmt: skip
            _figs(list(figs["logits"])),
        ]
    if figs["saturation"] or cmp.saturation:
        body += ['<h2 id="saturation">Softcap saturation</h2>', _figs(list(figs["saturation"]), grid=True)]
        body.append(_table(
            ["point", "softcap", "cap", "ref share", "cand share", "ref max |pre|", "cand max |pre|"],
            [[s.point, s.kind, fmt(s.cap), fmt(s.ref_share), fmt(s.cand_share), fmt(s.ref_max_pre),
              fmt(s.cand_max_pre)] for s in cmp.saturation],
            left=2, fails=[not s for s in cmp.saturation],
        ))  # fmt: skip
    cont = continuations(report)
    if cont is not None:
        d = cont.first_difference

        def box(label: str, text: str, ids: Sequence[int]) -> str:
            return f"<div><strong>{label}</strong>\n{escape(text)}\n\nids: {escape(' '.join(map(str, ids)))}</div>"

        body += [
            '<h2 id="continuations">Greedy continuations</h2>',
            '<div class="cont">' + box("reference", cont.reference.text, cont.reference.ids)
            + box("candidate", cont.candidate.text, cont.candidate.ids) + "</div>",
            f"<p>{'Identical.' if d is None else f'First differing generated token: #{d}.'}</p>",
        ]  # fmt: skip
    body.append('<div id="sections">')
    body += [_section(s) for s in report.sections]
    body.append("</div>")
    body += ['<h2 id="run">Run</h2>', _table(["", ""], run_rows(report), left=1, text_cols=[1])]
    if cmp.points:
        pts = list(cmp.points.values())
        body += [
            '<h2 id="points">All points</h2>',
            f"<details><summary>{len(pts)} capture points</summary>",
            _table(
                ["point", "min cos", "max rel err", "max norm ratio", "min SQNR dB", "non-finite ref/cand"],
                [[r.point, fmt(r.min_cosine), fmt(r.max_rel_l2), fmt(r.max_norm_ratio), fmt(r.min_sqnr_db),
                  f"{r.ref_nonfinite}/{r.cand_nonfinite}"] for r in pts],
                fails=[not r for r in pts],
            ),  # fmt: skip
            "</details>",
        ]
    all_figs = {k: v for group in figs.values() for k, v in group.items()}
    script = JS.replace("__FIGS__", _script_json(all_figs)).replace("__CONFIG__", _script_json(PLOT_CONFIG))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title(report))}</title><style>{CSS}</style>\n"
        f'<script type="text/javascript">{plotly_js()}</script>\n'
        "</head>\n<body>\n" + "\n".join(body) + f"\n<script>{script}</script>\n</body></html>\n"
    )
