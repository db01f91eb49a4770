"""`bisect audit REF.gguf CAND_DIR/`: weights and scales against the reference, no forward pass.

A thin layer over ``layerbisect.api.audit_weights``. Exit codes: 0 no fault, 1 faults
found, 2 bad input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from . import options as o
from .errors import fail


def audit(
    ref: Annotated[str, typer.Argument(help="Reference: a GGUF file.")],
    cand: Annotated[str, typer.Argument(help="Candidate: a quantized HF checkpoint directory, or a GGUF.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write audit.json and audit.md into this directory.")
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List every tensor, not only the faults.")] = False,
    device: o.Device = "cpu",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into a non-empty directory layerbisect did not make.")
    ] = False,
) -> None:
    """Audit every candidate tensor (dequantized) against the reference: cosine, error, best-fit scale, layout."""
    from ..api import audit_weights
    from ..outputs import StagedDir, check_out_dir
    from ..preflight import check_device

    if out is not None:  # before any model is loaded; the write itself is staged and moved into place
        check_out_dir(out, overwrite=overwrite)
    check_device(device)
    try:
        result = audit_weights(ref, cand, device=device)
    except InputError as e:
        fail(e)
        return
    console = Console()
    if not console.is_terminal:  # logs and CI: do not fold names into 80 columns
        console = Console(width=180)
    rows = result.rows if show_all else result.faults
    if rows:
        table = Table(title="weight audit" + ("" if show_all else ": faults"), show_lines=False)
        for col in ("tensor", "scheme", "cosine", "rel err", "alpha", "status", "cause", "note"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r.name, r.scheme, _f(r.cosine), _f(r.rel_err), _f(r.alpha), r.status, r.cause, r.note)
        console.print(table)
    console.print(result.summary_text(limit=0).splitlines()[0])
    if out is not None:
        from ..comparison.report import jsonable

        with StagedDir(out, overwrite=overwrite) as stage:
            (stage / "audit.json").write_text(json.dumps(jsonable(result.to_dict()), indent=1), encoding="utf-8")
            (stage / "audit.md").write_text(to_markdown(result), encoding="utf-8")
        console.print(f"wrote {out / 'audit.json'}, {out / 'audit.md'}")
    raise typer.Exit(0 if result.ok else 1)


def _f(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4g}"


def to_markdown(result) -> str:  # noqa: ANN001 - WeightAudit
    lines = [f"# Weight audit\n\nreference `{result.ref_path}`, candidate `{result.cand_path}`\n",
             f"**{'No fault' if result.ok else f'{len(result.faults)} fault(s)'}** in {len(result.rows)} tensors.\n"]
    for f in result.findings():
        lines.append(f"- **[{f.severity}] {f.title}** — {f.detail}")
    lines += ["", "| tensor | scheme | cosine | rel err | alpha | status | cause | note |", "|---" * 8 + "|"]
    for r in result.rows:
        lines.append(f"| {r.name} | {r.scheme} | {_f(r.cosine)} | {_f(r.rel_err)} | {_f(r.alpha)} | {r.status} | "
                     f"{r.cause} | {r.note} |")
    return "\n".join(lines) + "\n"
