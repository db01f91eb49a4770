"""JUnit XML and the GitHub step summary: the two things CI systems read.

JUnit: one testcase per compared point (class ``points``), one for the logits, one per
softcap, one per finding at error level or above (class ``findings``), and one per gate
failure when a gate result is given, so a CI test tab lists exactly what broke.
Step summary: the compact Markdown report appended to ``$GITHUB_STEP_SUMMARY`` when that
variable is set (GitHub Actions); a no-op elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr

if TYPE_CHECKING:
    from layerbisect.comparison.gate import GateResult
    from layerbisect.comparison.report import Report


def _case(classname: str, name: str, failure: str | None) -> str:
    head = f"<testcase classname={quoteattr(classname)} name={quoteattr(name)}"
    if failure is None:
        return head + "/>"
    first = failure.splitlines()[0][:300] if failure else "failed"
    return f"{head}><failure message={quoteattr(first)}>{xml_escape(failure)}</failure></testcase>"


def render(report: Report, gate: GateResult | None = None) -> str:
    cmp = report.comparison
    cases: list[str] = []
    for r in cmp.points.values():
        cases.append(_case("layerbisect.points", r.point, None if r else str(r)))
    if cmp.logits is not None:
        cases.append(_case("layerbisect.logits", "logits", None if cmp.logits else str(cmp.logits)))
    for s in cmp.saturation:
        cases.append(_case("layerbisect.softcap", s.point, None if s else str(s)))
    for f in report.findings:
        if f.severity in ("critical", "error"):
            cases.append(_case("layerbisect.findings", f"{f.kind}: {f.where() or '-'}", f"{f.title}\n{f.detail}"))
    if gate is not None:
        if gate.passed:
            cases.append(_case("layerbisect.gate", "gate", None))
        for k, line in enumerate(gate.failures):
            cases.append(_case("layerbisect.gate", f"gate #{k + 1}", line))
    failures = sum(1 for c in cases if "<failure" in c)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuites><testsuite name="layerbisect" tests="{len(cases)}" failures="{failures}" errors="0">\n'
        + "\n".join(cases)
        + "\n</testsuite></testsuites>\n"
    )


def is_ours(path: Path) -> bool:
    """A JUnit file this module wrote (its suite is named "layerbisect"): safe to replace without --overwrite."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return b'<testsuite name="layerbisect"' in head


def write_junit(report: Report, path: str | Path, gate: GateResult | None = None, *, overwrite: bool = False) -> Path:
    """Write atomically (temporary file + rename); an existing file that is not ours needs ``overwrite``."""
    from layerbisect.outputs import write_file_atomic

    return write_file_atomic(path, render(report, gate), overwrite=overwrite, ours=is_ours, what="JUnit XML file")


def write_step_summary(
    report: Report, gate: GateResult | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """Append the compact Markdown report to $GITHUB_STEP_SUMMARY; returns its path, or None when unset."""
    from layerbisect.reports import markdown

    env = os.environ if env is None else env
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    p = Path(target)
    with p.open("a", encoding="utf-8") as fh:
        fh.write(markdown.render(report, gate, compact=True))
        fh.write("\n")
    return p
