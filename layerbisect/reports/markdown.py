"""Markdown report (report.md, and the GitHub step summary in compact form).

Findings come first: a reader who stops after the first screen knows where and why. Then
the run, the per-layer table, logits, softcap saturation, continuations, extra sections
and (full form only) every point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from layerbisect.reports.common import (
    LAYER_COLUMNS,
    SEVERITY_LABEL,
    cell,
    continuations,
    finding_evidence_text,
    fmt,
    layer_rows,
    meta_rows,
    verdict,
)

if TYPE_CHECKING:
    from layerbisect.comparison.gate import GateResult
    from layerbisect.comparison.report import Report

_EMOJI = {"critical": "🛑", "error": "❌", "warning": "⚠️", "info": "ℹ️"}


def _esc(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(_esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def findings_md(report: Report) -> str:
    lines = ["## Findings", ""]
    fs = report.findings
    if not fs:
        return "\n".join(lines + ["No findings: every compared point is within the thresholds.", ""])
    for f in fs:
        where = f.where()
        lines.append(
            f"- {_EMOJI.get(f.severity, '')} **{SEVERITY_LABEL.get(f.severity, f.severity.upper())}** "
            f"`{f.kind}`: {f.title}" + (f" (at `{where}`)" if where else "")
        )
        if f.detail:
            lines.append(f"  {f.detail}")
        if f.evidence:
            lines.append(f"  <sub>{_esc(finding_evidence_text(f.evidence))}</sub>")
    lines.append("")
    return "\n".join(lines)


def gate_md(gate: GateResult) -> str:
    head = "## Gate: ✅ passed" if gate.passed else f"## Gate: ❌ failed ({len(gate.failures)})"
    lines = [head, ""]
    lines += [f"- {_esc(f)}" for f in gate.failures[:50]]
    if len(gate.failures) > 50:
        lines.append(f"- … {len(gate.failures) - 50} more")
    lines += [f"- note: {_esc(n)}" for n in gate.notes[:20]]
    return "\n".join(lines + [""])


def render(report: Report, gate: GateResult | None = None, *, compact: bool = False) -> str:
    cmp = report.comparison
    title = "layerbisect report"
    if "ref_model" in report.meta or "cand_model" in report.meta:
        title += f": {report.meta.get('ref_model', 'reference')} vs {report.meta.get('cand_model', 'candidate')}"
    parts = [f"# {title}", "", f"**Verdict:** {verdict(report)}", ""]
    parts.append(findings_md(report))
    if gate is not None:
        parts.append(gate_md(gate))

    parts += ["## Run", "", table(["", ""], meta_rows(report)), ""]

    rows = layer_rows(report)
    if rows:
        parts += ["## Per layer (residual stream)", "", table([h for _, h in LAYER_COLUMNS], rows), ""]

    if cmp.logits is not None:
        lg = cmp.logits
        parts += [
            "## Logits",
            "",
            table(
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
            ),
            "",
        ]
    if cmp.saturation:
        sat_rows = [
            [s.point, s.kind, fmt(s.cap), fmt(s.ref_share), fmt(s.cand_share), fmt(s.ref_max_pre), fmt(s.cand_max_pre)]
            for s in cmp.saturation
            if not compact or not s
        ]
        if sat_rows:
            parts += [
                "## Softcap saturation",
                "",
                "Share of values with |cap·tanh(x/cap)| ≥ 0.99·cap, and the largest pre-softcap |x|.",
                "",
                table(["point", "softcap", "cap", "ref share", "cand share", "ref max |x|", "cand max |x|"], sat_rows),
                "",
            ]
    cont = continuations(report)
    if cont is not None:
        d = cont.first_difference
        parts += [
            "## Greedy continuations",
            "",
            table(
                ["", "text", "ids"],
                [
                    ["reference", cont.ref_text, " ".join(map(str, cont.ref_ids))],
                    ["candidate", cont.cand_text, " ".join(map(str, cont.cand_ids))],
                ],
            ),
            "",
            "Identical." if d is None else f"First differing generated token: #{d}.",
            "",
        ]
    for s in report.extra_sections:
        parts += [f"## {s.title}", ""]
        if s.note:
            parts += [s.note, ""]
        rows_ = s.rows()
        if rows_ is None:
            parts += [s.text(), ""]
        elif rows_:
            headers = list(dict.fromkeys(k for r in rows_ for k in r))
            parts += [table(headers, [[cell(r.get(h)) for h in headers] for r in rows_]), ""]
    if not compact and cmp.points:
        parts += [
            "## All points",
            "",
            table(
                ["point", "min cos", "max rel_l2", "max norm ratio", "min SQNR dB", "non-finite ref/cand", "pass"],
                [
                    [
                        r.point,
                        fmt(r.min_cosine),
                        fmt(r.max_rel_l2),
                        fmt(r.max_norm_ratio),
                        fmt(r.min_sqnr_db),
                        f"{r.ref_nonfinite}/{r.cand_nonfinite}",
                        "✅" if r else "❌",
                    ]
                    for r in cmp.points.values()
                ],
            ),
            "",
        ]
    return "\n".join(parts).rstrip() + "\n"
