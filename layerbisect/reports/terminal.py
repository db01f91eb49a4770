"""Terminal report (rich): findings first, coloured by severity, then the per-layer table,
logits and both greedy continuations. The only module of the package that imports rich
for output; library code returns objects, this renders them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from layerbisect.reports.common import (
    LAYER_COLUMNS,
    SEVERITY_LABEL,
    cell,
    continuations,
    finding_evidence_text,
    fmt,
    layer_rows,
    verdict,
)

if TYPE_CHECKING:
    from layerbisect.comparison.gate import GateResult
    from layerbisect.comparison.report import Report

STYLE = {"critical": "bold white on red", "error": "bold red", "warning": "yellow", "info": "cyan"}


def findings_renderable(report: Report) -> Group:
    items: list[Text] = []
    for f in report.findings:
        t = Text()
        t.append(f" {SEVERITY_LABEL.get(f.severity, f.severity.upper()):8} ", style=STYLE.get(f.severity, ""))
        t.append(f" {f.kind} ", style="dim")
        t.append(f.title, style="bold")
        if f.where():
            t.append(f"  @ {f.where()}", style="magenta")
        if f.detail:
            t.append(f"\n           {f.detail}")
        if f.evidence:
            t.append(f"\n           {finding_evidence_text(f.evidence)}", style="dim")
        items.append(t)
    if not items:
        items.append(Text("No findings: every compared point is within the thresholds.", style="green"))
    return Group(*items)


def render(report: Report, console: Console | None = None, gate: GateResult | None = None) -> None:
    console = console or Console()
    cmp = report.comparison
    console.print(Panel(findings_renderable(report), title=f"Findings ({verdict(report)})", title_align="left"))
    if gate is not None:
        if gate.passed:
            console.print(f"[bold green]Gate passed[/] ({gate.checked} checks)")
        else:
            console.print(f"[bold red]Gate failed[/]: {len(gate.failures)} of {gate.checked} checks")
            for line in gate.failures[:20]:
                console.print(f"  [red]-[/] {line}", highlight=False)
            if len(gate.failures) > 20:
                console.print(f"  … {len(gate.failures) - 20} more (see report.md)")

    rows = layer_rows(report)
    if rows:
        lt = cmp.layer_table()
        table = Table(title="Per layer (residual stream)", title_justify="left")
        for k, (_, h) in enumerate(LAYER_COLUMNS):
            table.add_column(h, justify="left" if k == 4 else "right")
        for r, ok in zip(rows, lt["passed"].tolist(), strict=False):
            table.add_row(*r, style=None if ok else "red")
        console.print(table)

    if cmp.logits is not None:
        lg = cmp.logits
        style = "green" if lg else "red"
        console.print(
            f"[bold]Logits[/]: KL mean [{style}]{fmt(lg.mean_kl)}[/] nats (max {fmt(lg.max_kl)} at token "
            f"{fmt(lg.worst_kl_token)}), top-1 agreement [{style}]{fmt(lg.top1_agreement)}[/], "
            f"top-5 overlap {fmt(lg.mean_top5_overlap)}",
            highlight=False,
        )
    for s in cmp.saturation:
        if not s or s.kind == "final":
            console.print(
                f"[bold]Softcap[/] {s.point}: at the wall ref {fmt(s.ref_share)} / cand "
                f"[{'red' if not s else 'green'}]{fmt(s.cand_share)}[/], max |pre| ref {fmt(s.ref_max_pre)} / "
                f"cand {fmt(s.cand_max_pre)}",
                highlight=False,
            )

    cont = continuations(report)
    if cont is not None:
        ct = Table(title="Greedy continuations", title_justify="left", show_lines=True)
        ct.add_column("reference")
        ct.add_column("candidate")
        ct.add_row(Text(cont.ref_text), Text(cont.cand_text))
        ct.add_row(
            Text(" ".join(map(str, cont.ref_ids)), style="dim"), Text(" ".join(map(str, cont.cand_ids)), style="dim")
        )
        console.print(ct)
        d = cont.first_difference
        console.print("identical" if d is None else f"first differing generated token: #{d}", style="dim")

    for s in report.extra_sections:
        rws = s.rows()
        if rws is None:
            console.print(Panel(Text(s.text()), title=s.title, title_align="left"))
            continue
        et = Table(title=s.title, title_justify="left", caption=s.note or None)
        headers = list(dict.fromkeys(k for r in rws for k in r))
        for h in headers:
            et.add_column(str(h))
        for r in rws:
            et.add_row(*[cell(r.get(h)) for h in headers])
        console.print(et)


def render_text(report: Report, width: int = 140, gate: GateResult | None = None) -> str:
    """The terminal report as plain text (tests, logs)."""
    console = Console(record=True, width=width, force_terminal=False, color_system=None)
    with console.capture() as cap:
        render(report, console, gate=gate)
    return cap.get()
