"""Markdown report (report.md, and the GitHub step summary in compact form).

What a reviewer reads in a pull request, findings first: a reader who stops after the first
screen knows where and why. Then the gate, the per-layer table, logits, softcap saturation,
both continuations, the top rows of each section (local error, per-module error, audits,
bisect) and the run. Every table in full, the plots and every point are in report.html,
report.json and points.parquet; this file stays small (≤ 30 KB on the bundled Gemma 3 270M,
tests/reports/test_outputs.py) so it can be pasted into a review.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from layerbisect.comparison.sections import Section
from layerbisect.reports.common import (
    LAYER_COLUMNS,
    OTHER_OUTPUTS,
    SEVERITY_LABEL,
    clip,
    continuations,
    finding_evidence_text,
    fmt,
    fmt_cell,
    layer_rows,
    run_rows,
    title,
    verdict,
)

if TYPE_CHECKING:
    from layerbisect.comparison.gate import GateResult
    from layerbisect.comparison.report import Report

_EMOJI = {"critical": "🛑", "error": "❌", "warning": "⚠️", "info": "ℹ️"}
DETAIL_CHARS = 600  # a finding's detail beyond this is in report.html / report.json
GATE_LINES = 20


def _esc(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
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
            lines.append(f"  {clip(f.detail, DETAIL_CHARS)}")
        ev = finding_evidence_text(f.evidence)
        if ev:
            lines.append(f"  <sub>{_esc(ev)}</sub>")
    lines.append("")
    return "\n".join(lines)


def gate_md(gate: GateResult) -> str:
    head = "## Gate: ✅ passed" if gate.passed else f"## Gate: ❌ failed ({len(gate.failures)} of {gate.checked})"
    lines = [head, ""]
    lines += [f"- {_esc(f)}" for f in gate.failures[:GATE_LINES]]
    if len(gate.failures) > GATE_LINES:
        lines.append(f"- … {len(gate.failures) - GATE_LINES} more (report.json, junit.xml)")
    lines += [f"- note: {_esc(n)}" for n in gate.notes[:10]]
    return "\n".join(lines + [""])


def section_md(s: Section) -> list[str]:
    out = [f"## {s.title}", ""]
    if s.text:  # several lines are preformatted (llama.cpp's KLD block): a code block keeps them
        out += (["```", s.text, "```", ""] if "\n" in s.text else [s.text, ""])
    cols, rows = s.brief()
    if rows:
        out += [table([c.title for c in cols], [[fmt_cell(v, c) for v, c in zip(r, cols)] for r in rows]), ""]
        how = []
        if s.rank_by:
            how.append(f"largest {next(c.title for c in s.columns if c.key == s.rank_by)} first")
        if len(s.rows) > len(rows):
            how.append(f"{len(rows)} of {len(s.rows)} rows; all in report.html and report.json")
        if how:
            out += [f"<sub>{'; '.join(how)}.</sub>", ""]
    if s.note:
        out += [f"<sub>{_esc(s.note)}</sub>", ""]
    return out


def render(report: Report, gate: GateResult | None = None, *, compact: bool = False) -> str:
    cmp = report.comparison
    parts = [f"# {title(report)}", "", f"**Verdict:** {verdict(report)}", ""]
    parts.append(findings_md(report))
    if gate is not None:
        parts.append(gate_md(gate))

    rows = layer_rows(report)
    if rows:
        parts += ["## Per layer (residual stream)", "", table([h for _, h, _ in LAYER_COLUMNS], rows), ""]

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
        sat = [s for s in cmp.saturation if s.kind == "final" or not s]
        sat_rows = [
            [s.point, s.kind, fmt(s.cap), fmt(s.ref_share), fmt(s.cand_share), fmt(s.ref_max_pre), fmt(s.cand_max_pre)]
            for s in sat[:12]
            if not compact or not s
        ]
        if sat_rows:
            parts += [
                "## Softcap saturation",
                "",
                "Share of values with |cap·tanh(x/cap)| ≥ 0.99·cap, and the largest pre-softcap |x| "
                "(final softcap and failing attention softcaps; every layer in report.html).",
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
                    ["reference", cont.reference.text, " ".join(map(str, cont.reference.ids))],
                    ["candidate", cont.candidate.text, " ".join(map(str, cont.candidate.ids))],
                ],
            ),
            "",
            "Identical." if d is None else f"First differing generated token: #{d}.",
            "",
        ]
    if not compact:
        for s in report.sections:
            parts += section_md(s)
        parts += ["## Run", "", table(["", ""], run_rows(report, full=False)), ""]
    parts += [f"<sub>Everything else: {OTHER_OUTPUTS}.</sub>", ""]
    return "\n".join(parts).rstrip() + "\n"
