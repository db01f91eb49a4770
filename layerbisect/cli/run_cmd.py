"""`bisect run MODEL`: run one model alone (reference GGUF or candidate checkpoint)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from . import options as o
from .progress import progress_display, terminal


def run(
    model: Annotated[str, typer.Argument(help="A .gguf file (reference) or a checkpoint directory (candidate).")],
    prompt: o.Prompt = o.DEFAULT_PROMPT,
    tokens: o.Tokens = None,
    generate: o.Generate = 12,
    device: o.Device = "cpu",
    act_quant: o.ActQuant = "checkpoint",
    nvfp4_act_scale: o.Nvfp4ActScale = "checkpoint",
    norm_act_quant: o.NormActQuant = "off",
    kv_cache_dtype: o.KvCacheDtype = "auto",
    kv_scales: o.KvScales = "checkpoint",
    kv_calibration: o.KvCalibration = "prompt",
    impl: o.Impl = "emulate",
    tokenizer: o.TokenizerPath = None,
) -> None:
    """Run one model: print the greedy continuation and per-layer residual norms and non-finite counts."""
    from .. import api
    from ..preflight import check_device, check_length, check_token_ids
    from ..tokenizer import parse_token_ids

    console = terminal(stderr=True)
    ids = parse_token_ids(tokens) if tokens is not None else None  # --tokens "" is an error, not the default
    check_device(device)
    cfg = api.peek_config(model)  # headers only, before the model loads
    check_token_ids(ids, cfg)
    check_length(len(ids) if ids else None, generate, cfg)
    with progress_display(console, "loading") as shown:
        progress = shown.progress
        res = api.run_model(
            model, prompt=None if ids else prompt, tokens=ids, generate=generate, device=device, progress=progress,
            options=api.candidate_options(act_quant, nvfp4_act_scale, impl, norm_act_quant),
            kv_cache=api.kv_cache_options(kv_cache_dtype, kv_scales, kv_calibration),
            tokenizer=tokenizer,
        )
    out = terminal()
    out.print(f"[bold]{res.path}[/] ({res.arch}), loaded in {res.load_seconds:.1f}s")
    out.print(f"prompt ids: {res.prompt_ids}")
    if res.generated_ids:
        out.print(f"generated ids: {res.generated_ids}")
        out.print(f"continuation: [green]{res.continuation!r}[/]")
    table = Table(title="residual stream per layer (layers.{i}.out)")
    for col in ("layer", "mean ‖x‖", "max ‖x‖", "max |x|", "NaN", "Inf"):
        table.add_column(col, justify="right")
    for row in res.per_layer:
        bad = row["nan"] or row["inf"]
        style = "red" if bad else None
        table.add_row(
            str(row["layer"]), f"{row['residual_norm_mean']:.4g}", f"{row['residual_norm_max']:.4g}",
            f"{row['amax']:.4g}", str(row["nan"]), str(row["inf"]), style=style,
        )
    out.print(table)
