"""Terminal report (rich): findings first, coloured by severity, then the per-layer table,
logits, both greedy continuations and the top rows of each section.

The only module of the package that imports rich for output; library code returns objects,
this renders them. Readable at 80 columns: short headers, light table borders, and point
or module names never cut (``no_wrap`` with their full width); free text wraps instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from layerbisect.comparison.sections import Section
from layerbisect.reports.common import (
    LAYER_COLUMNS,
    SEVERITY_LABEL,
    continuations,
    finding_evidence_text,
    fmt,
    fmt_cell,
    layer_rows,
    verdict,
)

if TYPE_CHECKING:
    from layerbisect.comparison.gate import GateResult
    from layerbisect.comparison.report import Report

STYLE = {"critical": "bold white on red", "error": "bold red", "warning": "yellow", "info": "cyan"}


def findings_renderable(report: Report) -> Table | Text:
    """One row per finding: the severity in its own column, so wrapped lines stay aligned under the text."""
    fs = report.findings
    if not fs:
        return Text("No findings: every compared point is within the thresholds.", style="green")
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    for f in fs:
        t = Text()
        t.append(f.kind, style="dim")
        t.append(" ")
        t.append(f.title, style="bold")
        if f.where():
            t.append(f" @ {f.where()}", style="magenta")
        if f.detail:
            t.append(f"\n{f.detail}")
        ev = finding_evidence_text(f.evidence)
        if ev:
            t.append(f"\n{ev}", style="dim")
        grid.add_row(Text(SEVERITY_LABEL.get(f.severity, f.severity.upper()), style=STYLE.get(f.severity, "")), t)
    return grid


def _table(title: str | None, caption: str | None = None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        padding=(0, 1),
    )


def _name_width(values: Sequence[str]) -> int:
    return max((len(v) for v in values), default=4)


def section_renderable(s: Section) -> Group:
    """The title on its own line (it wraps at the terminal's width), then the brief table: numbers are
    never cut; a table wider than the terminal continues below with the name columns repeated."""
    head = Text(s.title, style="bold")
    cols, rows = s.brief()
    if not rows:
        return Group(Text(""), head, Text(s.text)) if s.text else Group(Text(""), head)
    cells = [[fmt_cell(v, c) for v, c in zip(r, cols)] for r in rows]
    more = f"{len(rows)} of {len(s.rows)} rows; all in report.html" if len(s.rows) > len(rows) else None
    caption = " · ".join(x for x in (s.text, more) if x) or None
    return Group(Text(""), head, _FittedTable(cols, cells, caption))


class _FittedTable:
    """A section's table fitted to the console's width at render time (rich's ``__rich_console__``).

    The key columns (those before the first number, and the names) lead every part and are never cut;
    numeric columns keep their full values (no ellipsis) and their headers wrap at spaces; text columns
    take up to ``TEXT_WIDTH`` and fold beyond. When the columns do not all fit, the next part holds the rest.
    """

    TEXT_WIDTH = 40
    GAP = 2  # _table's padding between columns

    def __init__(self, cols: Sequence[Any], cells: list[list[str]], caption: str | None) -> None:
        self.cols, self.cells, self.caption = cols, cells, caption

    def _width(self, k: int) -> int:
        values = [len(r[k]) for r in self.cells]
        c = self.cols[k]
        if c.kind == "name":
            return max([*values, len(c.title)])
        words = max((len(w) for w in c.title.split()), default=1)
        if c.kind == "text":
            return max(words, min(max(values, default=1), self.TEXT_WIDTH))
        return max([*values, words])

    def __rich_console__(self, console: Console, options: Any) -> Any:
        first_number = next((k for k, c in enumerate(self.cols) if c.kind not in ("name", "text")), 1)
        lead = [k for k, c in enumerate(self.cols) if k <= max(first_number - 1, 0) or c.kind == "name"]
        rest = [k for k in range(len(self.cols)) if k not in lead]
        budget = options.max_width - sum(self._width(k) + self.GAP for k in lead)
        parts: list[list[int]] = [[]]
        used = 0
        for k in rest:
            w = self._width(k) + self.GAP
            if parts[-1] and used + w > budget:
                parts.append([])
                used = 0
            parts[-1].append(k)
            used += w
        for i, part in enumerate(parts):
            t = _table(None, self.caption if i == len(parts) - 1 else None)
            for k in lead + part:
                c, w = self.cols[k], self._width(k)
                # max_width too: rich would otherwise widen a column to its unwrapped header and crop the line
                if c.kind == "name":
                    t.add_column(c.title, no_wrap=True, min_width=w, max_width=w, overflow="fold")
                elif c.kind == "text":
                    t.add_column(c.title, overflow="fold", min_width=min(w, 12), max_width=w)
                else:
                    t.add_column(c.title, justify="right", min_width=w, max_width=w, overflow="fold")
            for r in self.cells:
                t.add_row(*(r[k] for k in lead + part))
            yield t


def render(report: Report, console: Console | None = None, gate: GateResult | None = None) -> None:
    console = console or Console()
    cmp = report.comparison
    console.print(Panel(findings_renderable(report), title=f"Findings ({verdict(report)})", title_align="left"))
    if gate is not None:
        if gate.passed:
            console.print(f"[bold green]Gate passed[/] ({gate.checked} checks)")
        else:
            console.print(f"[bold red]Gate failed[/]: {len(gate.failures)} of {gate.checked} checks")
            for line in gate.failures[:10]:
                console.print(f"  [red]-[/] {line}", highlight=False)
            if len(gate.failures) > 10:
                console.print(f"  … {len(gate.failures) - 10} more (see report.md)")
        for note in gate.notes[:10]:
            console.print(f"  note: {note}", highlight=False, markup=False)

    rows = layer_rows(report)
    if rows:
        lt = cmp.layer_table()
        table = _table("Per layer (residual stream)")
        for k, (_, h, _) in enumerate(LAYER_COLUMNS):
            if k == 4:
                table.add_column(h, no_wrap=True, min_width=_name_width([r[4] for r in rows]))
            else:
                table.add_column(h, justify="right", no_wrap=True)
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
        ct = Table(title="Greedy continuations", title_justify="left", title_style="bold", show_lines=True,
                   box=box.SQUARE, expand=False)  # fmt: skip
        ct.add_column("reference", ratio=1, overflow="fold")
        ct.add_column("candidate", ratio=1, overflow="fold")
        ct.add_row(Text(cont.reference.text), Text(cont.candidate.text))
        ct.add_row(
            Text(" ".join(map(str, cont.reference.ids)), style="dim"),
            Text(" ".join(map(str, cont.candidate.ids)), style="dim"),
        )
        console.print(ct)
        d = cont.first_difference
        console.print("identical" if d is None else f"first differing generated token: #{d}", style="dim")

    for s in report.sections:
        console.print(section_renderable(s))


def render_text(report: Report, width: int = 80, gate: GateResult | None = None) -> str:
    """The terminal report as plain text (tests, logs)."""
    console = Console(record=True, width=width, force_terminal=False, color_system=None)
    with console.capture() as cap:
        render(report, console, gate=gate)
    return cap.get()
