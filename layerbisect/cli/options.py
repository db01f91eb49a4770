"""Shared option aliases so every command spells the same option the same way."""

from __future__ import annotations

from typing import Annotated

import typer

Prompt = Annotated[str, typer.Option("--prompt", "-p", help="Prompt text, tokenized with the model's own tokenizer.")]
Tokens = Annotated[
    str | None,
    typer.Option("--tokens", help="Raw token ids instead of a prompt, e.g. 2,818,5279."),
]
Generate = Annotated[int, typer.Option("--generate", "-n", min=0, help="Greedy-decode this many tokens.")]
# The main job's spellings, default None so that it can tell a value the user gave (a dump brings its own ids)
PromptOrNone = Annotated[
    str | None,
    typer.Option("--prompt", "-p", help="Prompt text, tokenized with the model's own tokenizer.",
                 show_default="'The capital of France is'"),
]
GenerateOrNone = Annotated[
    int | None,
    typer.Option("--generate", "-n", min=0, help="Greedy-decode this many tokens (none with --candidate-dump).",
                 show_default="8"),
]
Device = Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1 ...")]
ActQuant = Annotated[
    str,
    typer.Option(
        "--act-quant",
        help="What-if for candidate activation quantization: checkpoint (as declared), static, dynamic, off.",
    ),
]
NormActQuant = Annotated[
    str,
    typer.Option(
        "--norm-act-quant",
        help="What-if (seed 000): 'unscaled' FP8-quantizes the outputs of the norms that write the residual and of "
        "the final norm per token and drops the scale, as an engine that thinks it was absorbed; default off.",
    ),
]
Nvfp4ActScale = Annotated[
    str,
    typer.Option(
        "--nvfp4-act-scale",
        help="NVFP4 activation global scale: checkpoint (input_global_scale) or observed (from the observed amax).",
    ),
]
KvCacheDtype = Annotated[
    str, typer.Option("--kv-cache-dtype", help="KV cache dtype of the candidate: auto (as declared), fp8_e4m3, none.")
]
KvScales = Annotated[
    str,
    typer.Option(
        "--kv-scales",
        help="FP8 KV-cache scales: checkpoint (k_scale/v_scale), calibrate (amax/448 of the first pass), unit (1.0).",
    ),
]
ComputeDtype = Annotated[
    str,
    typer.Option(
        "--compute-dtype",
        help="The candidate's arithmetic: fp32, bf16 or fp16 (every op rounded; FP16 overflow shows as Inf).",
    ),
]
KvCalibration = Annotated[
    str,
    typer.Option(
        "--kv-calibration",
        help="With --kv-scales calibrate, the first pass the scales freeze on: prompt (the real prompt), zeros "
        "(token id 0), random (seeded ids), garbage-state (the prompt from uninitialized recurrent state).",
    ),
]
Impl = Annotated[str, typer.Option("--impl", help="Candidate kernels: emulate (exact, CPU/GPU) or native (GPU).")]

DEFAULT_PROMPT = "The capital of France is"
TokenizerPath = Annotated[
    str | None,
    typer.Option("--tokenizer", help="A HF tokenizer.json (or a directory with one) instead of the GGUF vocabulary."),
]
