"""`bisect capture-llamacpp MODEL.gguf -o DUMP/`: llama.cpp's own activations as a candidate dump."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..tokenizer import parse_token_ids
from . import options as o


def capture_llamacpp(
    model: Annotated[str, typer.Argument(help="The GGUF llama.cpp runs (the candidate).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dump folder to write.")],
    prompt: o.Prompt = o.DEFAULT_PROMPT,
    tokens: o.Tokens = None,
    select: Annotated[str, typer.Option("--select", help="Capture points (comma-separated globs).")] = "*",
    kv_type: Annotated[str, typer.Option("--kv-type", help="llama.cpp KV cache type: f16 (its default) or f32.")] = (
        "f16"
    ),
    flash_attn: Annotated[
        bool, typer.Option("--flash-attn/--no-flash-attn", help="llama.cpp flash attention (default off).")
    ] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads (default: all cores).")] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Also keep every other named node, as llamacpp.<node name>.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty folder.")] = False,
) -> None:
    """Run MODEL in llama.cpp on the prompt, record every mapped graph node, write a dump for --candidate-dump."""
    from ..engines.llamacpp import capture_llamacpp as capture

    ids = parse_token_ids(tokens) if tokens is not None else None
    res = capture(
        model, out, prompt=None if ids is not None else prompt, token_ids=ids,
        select=[s.strip() for s in select.split(",")], kv_type=kv_type, flash_attn=flash_attn, n_threads=threads,
        raw=raw, overwrite=overwrite,
    )
    con = Console()
    con.print(f"llama.cpp ({res.arch}) ran {len(res.token_ids)} tokens {res.token_ids} in {res.decode_seconds:.2f} s; "
              f"{res.n_nodes} graph nodes, {len(res.names)} captured points → [bold]{res.out_dir}[/]")
    for p in res.problems:
        con.print(f"[yellow]problem:[/] {p}")
    con.print(f"compare: bisect REF.gguf --candidate-dump {res.out_dir}")
