"""`bisect REF CAND` (= `bisect compare`): the main job, as a thin layer over ``layerbisect.compare``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import InputError
from . import options as o


def compare(
    ref: Annotated[str, typer.Argument(help="Reference: a GGUF file (any common llama.cpp quant type).")],
    cand: Annotated[
        str | None,
        typer.Argument(
            help="Candidate: a quantized HF checkpoint directory (compressed-tensors, ModelOpt) or a GGUF "
            "(another llama.cpp quant of the same model: each tensor is reported with its GGML type)."
        ),
    ] = None,
    prompt: o.PromptOrNone = None,
    tokens: o.Tokens = None,
    generate: o.GenerateOrNone = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")] = Path("bisect-report"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into a directory (or replace a --junit file) we did not make.")
    ] = False,
    formats: Annotated[str, typer.Option("--formats", help="Comma list of md,html,json,parquet,csv,junit.")] = (
        "md,html,json,parquet"
    ),
    gate: Annotated[
        Path | None, typer.Option("--gate", help="Gate thresholds (TOML); default gate otherwise.")
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="A previous report.json: fail on cosine drops versus it.")
    ] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write a JUnit XML file here.")] = None,
    candidate_dump: Annotated[
        Path | None, typer.Option("--candidate-dump", help="An engine activation dump (see docs/ENGINE_CAPTURE.md).")
    ] = None,
    dump_map: Annotated[
        str | None,
        typer.Option(
            "--dump-map",
            help="Name map (built-in name or TOML) for an SGLang or TensorRT-LLM dump given to --candidate-dump.",
        ),
    ] = None,
    select: Annotated[str, typer.Option("--select", help="Capture points (comma-separated globs).")] = "*",
    device: o.Device = "cpu",
    ref_device: Annotated[str | None, typer.Option("--ref-device", help="Device of the reference.")] = None,
    cand_device: Annotated[str | None, typer.Option("--cand-device", help="Device of the candidate.")] = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--resident",
            help="Stream weights one layer at a time from the mapped files, or hold the whole model. "
            "Default: stream a side whose FP32 size exceeds its memory budget.",
        ),
    ] = None,
    memory_cap: Annotated[
        str | None,
        typer.Option("--memory-cap", help="Weight memory per side, e.g. 8GB or 6GiB (default: free device memory)."),
    ] = None,
    act_quant: o.ActQuant = "checkpoint",
    nvfp4_act_scale: o.Nvfp4ActScale = "checkpoint",
    norm_act_quant: o.NormActQuant = "off",
    kv_cache_dtype: o.KvCacheDtype = "auto",
    kv_scales: o.KvScales = "checkpoint",
    kv_calibration: o.KvCalibration = "prompt",
    impl: o.Impl = "emulate",
    compute_dtype: o.ComputeDtype = "fp32",
    expected: Annotated[
        bool,
        typer.Option("--expected/--no-expected",
                     help="Expected lane: the reference's weights in the candidate's format, for noise-aware verdicts "
                     "and the built-in gate's thresholds."),
    ] = True,
    localize: Annotated[
        bool, typer.Option("--localize/--no-localize", help="Activation patching: local vs accumulated error.")
    ] = True,
    bisect_modules: Annotated[
        bool, typer.Option("--bisect/--no-bisect", help="Binary-search the quantized modules that fail the gate.")
    ] = False,
    restore_search: Annotated[
        bool,
        typer.Option(
            "--restore-search",
            help="Measure the KL each candidate type, layer, tensor role and tensor costs by restoring it to the "
            "reference's precision (greedy; one logits pass per trial). Which tensors to keep at higher precision.",
        ),
    ] = False,
    restore_steps: Annotated[
        int, typer.Option("--restore-steps", help="Length of the greedy per-tensor path of --restore-search.")
    ] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the findings and the gate verdict.")] = False,
    tokenizer: o.TokenizerPath = None,
) -> None:
    """Compare a candidate with the reference point by point; write reports; exit 0 pass, 1 gate fail, 2 bad input."""
    from .. import api
    from ..comparison import gate as gate_mod
    from ..comparison.report import check_formats
    from ..outputs import check_out_dir, check_out_file
    from ..pipeline import CompareOptions
    from ..pipeline import compare as run_compare
    from ..preflight import (
        check_baseline,
        check_device,
        check_length,
        check_select,
        check_token_ids,
    )
    from ..reports import junit as junit_mod
    from ..reports import terminal as report_view
    from ..streaming import parse_bytes
    from ..tokenizer import parse_token_ids

    # Every argument is checked before any model is loaded (preflight.py): a bad --out must not cost a run.
    if cand is None and candidate_dump is None:
        raise InputError("CAND_DIR", "missing the candidate: give CAND_DIR or --candidate-dump DIR")
    if dump_map is not None:  # a map only reads a dump; a missing or unknown one is an error, not ignored
        if candidate_dump is None:
            raise InputError("--dump-map", "names the map of an engine dump: give --candidate-dump DIR too")
        from ..engines.namemap import resolve_name_map

        resolve_name_map(dump_map)
    if candidate_dump is not None:  # a dump is captured activations: no modules to swap, no decoding of its own
        for flag, on in (("--bisect", bisect_modules), ("--restore-search", restore_search)):
            if on:
                raise InputError(flag, "swaps the candidate's modules: it needs a candidate checkpoint, not a dump")
        if generate:
            raise InputError("--generate", "an engine dump holds the positions it captured; nothing is generated")
    generate = 0 if candidate_dump is not None else (8 if generate is None else generate)
    prompt_given = prompt is not None
    prompt = o.DEFAULT_PROMPT if prompt is None else prompt
    fmt = [f.strip() for f in formats.split(",") if f.strip()]
    check_formats(fmt)
    check_out_dir(out, overwrite=overwrite)
    if junit is not None:
        check_out_file(junit, overwrite=overwrite, ours=junit_mod.is_ours, what="JUnit XML file")
    user_gate = gate_mod.GateConfig.from_toml(gate) if gate else None
    gate_cfg = user_gate or gate_mod.GateConfig.builtin()
    if (bisect_modules or restore_search) and stream:
        what = "--bisect" if bisect_modules else "--restore-search"
        raise InputError(what, "swaps modules in a resident model; it cannot run with --stream")
    if restore_steps < 1:
        raise InputError("--restore-steps", f"{restore_steps} is not a positive number of steps")
    for flag, dev in (("--device", device), ("--ref-device", ref_device), ("--cand-device", cand_device)):
        check_device(dev, flag)
    ids = parse_token_ids(tokens) if tokens is not None else None
    opts = CompareOptions(
        prompt=prompt if candidate_dump is None or prompt_given else None,
        dump_prompt=candidate_dump is not None and prompt_given,
        tokens=ids,
        generate=generate,
        device=device,
        ref_device=ref_device,
        cand_device=cand_device,
        select=select,
        quant_options=api.candidate_options(act_quant, nvfp4_act_scale, impl, norm_act_quant, compute_dtype),
        kv_cache=api.kv_cache_options(kv_cache_dtype, kv_scales, kv_calibration),
        localize=localize,
        tokenizer=tokenizer,
        stream=False if (bisect_modules or restore_search) else stream,  # both swap modules in a resident model
        memory_cap=parse_bytes(memory_cap),
        thresholds=gate_cfg.comparison_thresholds(),
        dump_map=dump_map,
        expected=expected,
    )
    ref_cfg = api.peek_config(ref)  # the GGUF header only
    check_token_ids(ids, ref_cfg)
    check_length(len(ids) if ids else None, generate, ref_cfg)
    check_select(select, ref_cfg)
    baseline_data = check_baseline(baseline, ref_cfg, select) if baseline is not None else None
    from .progress import progress_display, terminal

    console = terminal(stderr=True)

    with progress_display(console) as shown:
        progress, status = shown.progress, shown.status
        report = run_compare(ref, cand, candidate_dump=candidate_dump, options=opts, progress=progress, status=status)
        gate_cfg = user_gate or gate_mod.GateConfig.builtin_for(report)  # derived from the expected lane
        if bisect_modules:
            from ..bisect_modules import bisect_report

            status("bisecting quantized modules")
            bisect_report(report, ref, cand, opts, gate_cfg)
        if restore_search and cand is not None:
            from ..restore import restore_report

            status("restore search")
            restore_report(report, ref, cand, opts, steps=restore_steps, status=status)
    result = gate_mod.evaluate(report, gate_cfg, baseline=baseline_data, baseline_where=baseline)
    written = report.save(out, fmt, overwrite=overwrite, gate=result)
    if junit:
        junit_mod.write_junit(report, junit, gate=result, overwrite=overwrite)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        junit_mod.write_step_summary(report, gate=result)
    out = terminal()
    report_view.render(report, out, gate=result) if not quiet else _quiet(out, report, result)
    out.print(f"reports: {', '.join(str(p) for p in written.values())}", highlight=False)  # wraps at ", "
    raise typer.Exit(result.exit_code)


def _quiet(c: Console, report, result) -> None:  # noqa: ANN001
    from rich.markup import escape

    for f in report.findings[:8]:
        c.print(escape(f"[{f.severity}] {f.title}"))
    c.print("gate: " + ("PASS" if result.passed else "FAIL"))
    for line in result.failures[:5]:  # why, in a line each (the findings above may all be info)
        c.print(escape(f"  - {line}"))
    if len(result.failures) > 5:
        c.print(f"  … {len(result.failures) - 5} more (see report.md)")
    for note in result.notes[:10]:
        c.print(escape(f"gate note: {note}"))
