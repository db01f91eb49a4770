"""The Python API the CLI is a thin layer over.

``open_runner`` picks the runner from what the path is and the side it plays: a ``.gguf``
file → the FP32 reference, or, as the candidate (``role="candidate"``), a GGUF candidate
that also names each tensor's GGML type (``candidates/gguf_runner.py``); a directory with
``config.json`` + safetensors → the quantized checkpoint candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .capture import Captures, layer_point
from .errors import InputError
from .runner import ModelRunner, check_same_model

ProgressFn = Callable[[str, int, int], None]


def is_gguf(path: str | Path) -> bool:
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    return False


def open_runner(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    options: Any = None,
    kv_cache: Any = None,
    role: str = "reference",
) -> ModelRunner:
    """A runner for ``path`` (not yet activated); ``role`` ("reference"/"candidate") decides what a GGUF opens as."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or directory")
    if p.is_dir():
        from .candidates.runner import CandidateRunner

        return CandidateRunner(p, device=device, options=options, kv_cache=kv_cache, progress=progress)
    if p.suffix == ".gguf" or is_gguf(p):
        if role == "candidate":
            from .candidates.gguf_runner import GGUFCandidateRunner

            return GGUFCandidateRunner(p, device=device, progress=progress)
        from .references.runner import ReferenceRunner

        return ReferenceRunner(p, device=device, progress=progress)
    raise InputError(p, "neither a GGUF file nor a checkpoint directory (config.json + *.safetensors)")


def use_tokenizer(runner: ModelRunner, tokenizer: str | Path | None) -> None:
    """Replace the runner's own tokenizer by a HF tokenizer.json (file or directory) when one is given."""
    if tokenizer:
        from .tokenizer import tokenizer_from_hf

        runner.tokenizer = tokenizer_from_hf(tokenizer)


def resolve_tokens(runner: ModelRunner, prompt: str | None, tokens: Sequence[int] | None) -> list[int]:
    if tokens:
        ids = list(tokens)
    else:
        if runner.tokenizer is None:
            raise InputError(runner.path, "has no tokenizer: pass --tokens or --tokenizer")
        ids = runner.tokenizer.encode(prompt if prompt is not None else "")
    vocab = runner.config.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise InputError("--tokens", f"token ids {bad[:5]} are outside the vocabulary (size {vocab})")
    if not ids:
        raise InputError("--prompt", "no tokens to run")
    return ids


@dataclass
class RunResult:
    path: str
    arch: str
    prompt_ids: list[int]
    generated_ids: list[int]
    continuation: str
    captures: Captures
    load_seconds: float
    per_layer: list[dict[str, float]] = field(default_factory=list)


def run_model(
    path: str | Path,
    *,
    prompt: str | None = None,
    tokens: Sequence[int] | None = None,
    generate: int = 0,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    options: Any = None,
    kv_cache: Any = None,
    tokenizer: str | Path | None = None,
) -> RunResult:
    """Run one model alone: greedy continuation plus per-layer residual norms and non-finite counts."""
    runner = open_runner(path, device=device, progress=progress, options=options, kv_cache=kv_cache)
    runner.activate()
    use_tokenizer(runner, tokenizer)
    ids = resolve_tokens(runner, prompt, tokens)
    from .preflight import check_length

    check_length(len(ids), generate, runner.config)
    calibrate = getattr(runner, "calibrate_kv", None)
    if calibrate is not None:  # --kv-scales calibrate: the chosen first pass before the real one
        calibrate(ids)
    caps = Captures(summary_only=True, selector=_residual_selector(), token_ids=list(ids))
    new = runner.generate(ids, generate, captures=caps) if generate else []
    if not generate:
        caps = runner.run(ids, select=_residual_selector().patterns, summary_only=True)
    text = runner.tokenizer.decode(new) if (new and runner.tokenizer is not None) else ""
    per_layer = []
    for i in range(runner.config.n_layers):
        s = caps.summary(layer_point(i, "out"))
        per_layer.append(
            {
                "layer": i,
                "residual_norm_mean": float(s.norm.double().mean()),
                "residual_norm_max": float(s.norm.max()),
                "amax": float(s.amax.max()),
                "nan": int(s.nan.sum()),
                "inf": int(s.inf.sum()),
            }
        )
    return RunResult(
        path=str(path),
        arch=runner.config.arch,
        prompt_ids=ids,
        generated_ids=new,
        continuation=text,
        captures=caps,
        load_seconds=runner.load_seconds,
        per_layer=per_layer,
    )


def _residual_selector():
    from .capture import Selector

    return Selector(["embed", "layers.*.out", "logits"])


def candidate_options(act_quant: str = "checkpoint", nvfp4_act_scale: str = "checkpoint", impl: str = "emulate",
                      norm_act_quant: str = "off"):
    """What-if switches of the candidate runner (see docs: README 'What-if switches')."""
    from .candidates.qlinear import QuantOptions
    from .candidates.whatif_norms import MODES

    for name, value, allowed in (
        ("--act-quant", act_quant, ("checkpoint", "static", "dynamic", "off")),
        ("--nvfp4-act-scale", nvfp4_act_scale, ("checkpoint", "observed")),
        ("--impl", impl, ("emulate", "native")),
        ("--norm-act-quant", norm_act_quant, MODES),
    ):
        if value not in allowed:
            raise InputError(name, f"{value!r} is not one of {', '.join(allowed)}")
    return QuantOptions(act_quant=act_quant, nvfp4_act_global_scale=nvfp4_act_scale, impl=impl,  # type: ignore[arg-type]
                        norm_act_quant=norm_act_quant)  # type: ignore[arg-type]


def kv_cache_options(dtype: str = "auto", scales: str = "checkpoint", calibration: str = "prompt"):
    from .kv_cache import KVCacheOptions
    from .kv_calibration import CALIBRATION_INPUTS

    if dtype not in ("auto", "fp8_e4m3", "none"):
        raise InputError("--kv-cache-dtype", f"{dtype!r} is not one of auto, fp8_e4m3, none")
    if scales not in ("checkpoint", "calibrate", "unit"):
        raise InputError("--kv-scales", f"{scales!r} is not one of checkpoint, calibrate, unit")
    if calibration not in CALIBRATION_INPUTS:
        raise InputError("--kv-calibration", f"{calibration!r} is not one of {', '.join(CALIBRATION_INPUTS)}")
    if calibration != "prompt" and scales != "calibrate":
        raise InputError("--kv-calibration", f"{calibration!r} chooses the calibration pass of --kv-scales calibrate, "
                                             f"not of --kv-scales {scales}")
    return KVCacheOptions(dtype=dtype, scales=scales, calibration=calibration)  # type: ignore[arg-type]


def audit_weights(ref: str | Path, cand: str | Path, *, device: str = "cpu") -> Any:
    """Open both sides (no forward pass) and audit every tensor (an ``audit.weights.WeightAudit``).

    ``cand``: a quantized checkpoint directory or a GGUF (then each tensor carries its GGML type).

    Raises ``InputError`` on bad input, or when the two are not the same model.
    """
    from .audit.weights import audit_runners

    ref_runner = open_runner(ref, device=device)
    cand_runner = open_runner(cand, device=device, role="candidate")
    if ref_runner.kind != "reference":
        raise InputError(ref, "the reference must be a GGUF file")
    ref_runner.activate()
    cand_runner.activate()
    check_candidate(ref_runner, cand_runner)
    return audit_runners(ref_runner, cand_runner)


def peek_config(path: str | Path) -> Any:
    """The ``ModelConfig`` of a GGUF or checkpoint directory from its headers alone (no weight read)."""
    from .streaming import peek_config as _peek

    return _peek(open_runner(path))


def check_candidate(ref_runner: ModelRunner, cand_runner: ModelRunner) -> None:
    """Refuse a candidate that is not the same model (shapes; for two GGUFs, the vocabulary too)."""
    if getattr(cand_runner, "fmt", None) == "gguf":
        from .candidates.gguf_runner import check_same_gguf_model

        check_same_gguf_model(ref_runner, cand_runner)
    else:
        check_same_model(ref_runner, cand_runner)
