"""`bisect demo`: FP8 and NVFP4 candidates of the bundled Gemma 3 270M, compared and reported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import options as o


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report root; one folder per scheme.")] = Path(
        "bisect-report"
    ),
    schemes: Annotated[
        str, typer.Option("--schemes", help="Comma list of FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4, NVFP4A16.")
    ] = "FP8,NVFP4",
    prompt: o.Prompt = o.DEFAULT_PROMPT,
    generate: o.Generate = 8,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty foreign directory.")] = False,
) -> None:
    """Make (once, cached) FP8 and NVFP4 candidates of the bundled Gemma 3 270M and report each against the GGUF."""
    from ..demo import most_divergent_layer, run_demo
    from ..errors import InputError
    from ..pipeline import CompareOptions
    from ..producers.quantize import SCHEMES
    from ..reports import terminal as report_view
    from .progress import progress_display, terminal

    chosen = [s.strip().upper() for s in schemes.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SCHEMES]
    if bad:
        raise InputError("--schemes", f"unknown scheme(s) {bad}; choose from {', '.join(SCHEMES)}")
    from ..outputs import check_out_dir

    for s in chosen:  # before anything is built or run
        check_out_dir(out / s.lower(), overwrite=overwrite)
    with progress_display(terminal(stderr=True), "demo") as shown:
        results = run_demo(
            out, chosen, options=CompareOptions(prompt=prompt, generate=generate), overwrite=overwrite,
            say=shown.status, progress=shown.progress,
        )
    con = terminal()
    for scheme, (report, written) in results.items():
        con.rule(f"[bold]Gemma 3 270M {scheme} vs Q4_K_M GGUF reference")
        report_view.render(report, con)
        mdl = most_divergent_layer(report)
        if mdl:
            con.print(f"[bold]{scheme}: most divergent layer: {mdl[0]}[/] (residual cosine {mdl[1]:.5f})")
        con.print(f"reports: {', '.join(str(p) for p in written.values())}", highlight=False, soft_wrap=True)
