"""Gemma 3 270M, five llmcompressor schemes vs the FP32 GGUF reference: per-layer residual cosine -> docs/RESULTS.md.

    python scripts/gemma_schemes.py [--out docs/RESULTS.md] [--schemes FP8,NVFP4] [--no-producer-check]

The generated part of the doc is rewritten; a hand-written section starting at "## Notes" is kept.

For each scheme: build (or reuse from the cache) the candidate with the real producer
(``producers.quantize.quantize_checkpoint``), run ``layerbisect.compare`` with
``CompareOptions(prompt="The capital of France is", generate=8, localize=False)`` and collect the
min / mean over tokens of the cosine of ``layers.{i}.out`` (the residual stream), the logit metrics and both
greedy continuations.

Producer check (on by default): an independent forward of the same checkpoint from the producer's side, i.e.
transformers + compressed-tensors (``CompressedTensorsConfig(run_compressed=False)``: every Linear runs the
producer's own activation fake-quant), in FP32, on the same token ids; we report max |Δlogit| between it and our
candidate runner. Two things are set so that only the quantization is compared, not dtype artefacts:
the weights are dequantized by compressed-tensors' ``dequantize`` in FP32 (its decompressor rounds them to
bf16), and Gemma's embedding scale is √d in FP32 (HF builds the ``embed_scale`` buffer in the load dtype:
bf16(√640) = 25.25 instead of 25.298; llama.cpp and our graph use the FP32 value).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import torch

NOTES_HEADING = "## Notes"
PROMPT = "The capital of France is"
GENERATE = 8
ALL = ("FP8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4", "NVFP4A16")
WHAT = {
    "FP8": "W8A8 FP8, per-tensor weights, static per-tensor activations",
    "FP8_DYNAMIC": "W8A8 FP8, per-channel weights, dynamic per-token activations",
    "FP8_BLOCK": "W8A8 FP8, 128x128 block weights, dynamic 1x128 group activations",
    "NVFP4": "W4A4 NVFP4, 16-blocks with E4M3 scales; static activation global scale, dynamic block scales",
    "NVFP4A16": "W4A16 NVFP4 weights, BF16->FP32 activations",
}


def _machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores; Python "
            f"{platform.python_version()}, torch {torch.__version__} (CPU, FP32 emulation)")


def producer_logits(cand_dir: Path, ids: list[int]) -> torch.Tensor:
    """Logits (T, vocab) of the checkpoint run by transformers + compressed-tensors fake-quant, in FP32."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(
        cand_dir, dtype=torch.bfloat16, quantization_config=CompressedTensorsConfig(run_compressed=False)
    ).eval()
    model.float()
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(cand_dir.glob("*.safetensors")):
        sd.update(load_file(f))
    for name, mod in model.named_modules():
        scheme = getattr(mod, "quantization_scheme", None)
        if scheme is None or scheme.weights is None:
            continue
        p = name + "."
        if p + "weight_packed" in sd:  # NVFP4: codes -> e2m1 values; global scale is a divisor
            out_f, half = sd[p + "weight_packed"].shape
            q = unpack_fp4_from_uint8(sd[p + "weight_packed"], out_f, 2 * half, dtype=torch.float32)
            w = dequantize(q, sd[p + "weight_scale"].float(), None, scheme.weights, dtype=torch.float32,
                           global_scale=sd[p + "weight_global_scale"].float())
        else:
            w = dequantize(sd[p + "weight"], sd[p + "weight_scale"].float(), None, scheme.weights,
                           dtype=torch.float32)
        mod.weight.data = w.float()
    emb = model.get_input_embeddings()
    scale = getattr(emb, "scalar_embed_scale", None)
    if scale is not None:  # Gemma: HF's embed_scale buffer is bf16(√d) after a bf16 load; use the FP32 value
        emb.register_forward_hook(
            lambda mod, inp, out: torch.nn.functional.embedding(inp[0], mod.weight) * torch.tensor(
                float(scale), dtype=torch.float32))
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def run_scheme(gguf: Path, cand: Path, producer_check: bool) -> dict:
    import layerbisect
    from layerbisect.api import open_runner

    t0 = time.perf_counter()
    rep = layerbisect.compare(gguf, cand, options=layerbisect.CompareOptions(
        prompt=PROMPT, generate=GENERATE, localize=False))
    lt = rep.comparison.layer_table()
    lg = rep.comparison.logits
    cont = rep.record.continuations
    res = {
        "layers": {int(r.layer): (float(r.residual_min_cosine), float(r.residual_mean_cosine))
                   for r in lt.itertuples()},
        "mean_kl": lg.mean_kl, "max_kl": lg.max_kl, "top1": lg.top1_agreement, "top5": lg.mean_top5_overlap,
        "n_pos": len(rep.comparison.positions),
        "ref_text": cont.reference.text, "cand_text": cont.candidate.text,
        "ids": list(rep.record.tokens.ids), "seconds": time.perf_counter() - t0,
    }
    if producer_check:
        ids = res["ids"]
        ours = open_runner(cand).activate().run(ids, select="logits").tensors["logits"].float()
        theirs = producer_logits(Path(cand), ids)
        res["producer_max_dlogit"] = float((ours - theirs).abs().max())
        res["producer_argmax_agree"] = float((ours.argmax(-1) == theirs.argmax(-1)).double().mean())
    return res


def render(results: dict[str, dict], command: str, started: str, producer_check: bool) -> str:
    schemes = list(results)
    n_layers = max(max(r["layers"]) for r in results.values()) + 1
    any_r = next(iter(results.values()))
    lines = [
        "# Gemma 3 270M: five quantization schemes vs the FP32 GGUF reference",
        "",
        f"Measured {started} on {_machine()}.",
        "",
        "```",
        command,
        "```",
        "",
        f"Reference: the bundled GGUF (Q4_K_M) dequantized to FP32 through `layerbisect/model.py`. Candidates: the "
        f"HF BF16 conversion of the same GGUF quantized by llmcompressor `oneshot` (`QuantizationModifier(targets="
        f"\"Linear\", scheme=S, ignore=[\"lm_head\"])`, 3 short calibration texts; see `producers/quantize.py`), run "
        f"through the same graph with emulated quantized linears (FP32). Prompt `{PROMPT!r}` + {GENERATE} greedy "
        f"reference tokens, teacher-forced on both sides: {any_r['n_pos']} positions. "
        f"`layerbisect.compare(..., CompareOptions(prompt=..., generate={GENERATE}, localize=False))`.",
        "",
        "Cells: residual-stream cosine of `layers.{i}.out` vs the reference, **min / mean over the positions**.",
        "",
        "| layer | " + " | ".join(schemes) + " |",
        "|---|" + "---|" * len(schemes),
    ]
    for i in range(n_layers):
        cells = []
        for s in schemes:
            mn, me = results[s]["layers"].get(i, (float("nan"), float("nan")))
            cells.append(f"{mn:.4f} / {me:.4f}")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines.append("| logits KL mean / max (nats) | " + " | ".join(
        f"{results[s]['mean_kl']:.4f} / {results[s]['max_kl']:.4f}" for s in schemes) + " |")
    lines.append("| top-1 agreement | " + " | ".join(f"{results[s]['top1']:.0%}" for s in schemes) + " |")
    lines.append("| top-5 overlap (mean) | " + " | ".join(f"{results[s]['top5']:.2f}" for s in schemes) + " |")
    if producer_check:
        lines.append("| max \\|Δlogit\\| ours vs producer's own forward (FP32) | " + " | ".join(
            f"{results[s]['producer_max_dlogit']:.3g}" for s in schemes) + " |")
        lines.append("| argmax agreement ours vs producer | " + " | ".join(
            f"{results[s]['producer_argmax_agree']:.0%}" for s in schemes) + " |")
    lines += ["", "## Greedy continuations (8 tokens, each side generating on its own)", "",
              f"- reference: {any_r['ref_text']!r}"]
    for s in schemes:
        lines.append(f"- {s} ({WHAT[s]}): {results[s]['cand_text']!r}")
    lines += ["", "Seconds per scheme (compare" + (" + producer check" if producer_check else "") + "): "
              + ", ".join(f"{s} {results[s]['seconds']:.0f}" for s in schemes), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/RESULTS.md")
    ap.add_argument("--schemes", default=",".join(ALL))
    ap.add_argument("--no-producer-check", action="store_true")
    a = ap.parse_args(argv)
    from layerbisect.producers.cache import bundled_gguf
    from layerbisect.producers.hf_from_gguf import hf_checkpoint_from_gguf
    from layerbisect.producers.quantize import quantize_checkpoint

    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    gguf = bundled_gguf()
    hf = hf_checkpoint_from_gguf(gguf)
    results = {}
    for s in [x.strip() for x in a.schemes.split(",") if x.strip()]:
        cand = quantize_checkpoint(hf, s)
        print(f"[{s}] {cand}", file=sys.stderr, flush=True)
        results[s] = run_scheme(gguf, cand, not a.no_producer_check)
        r = results[s]
        print(f"[{s}] min residual cos {min(v[0] for v in r['layers'].values()):.4f}  KL {r['mean_kl']:.4f}  "
              f"top1 {r['top1']:.0%}  {r.get('producer_max_dlogit', '')}", file=sys.stderr, flush=True)
    command = "python " + " ".join(["scripts/gemma_schemes.py", *(argv if argv is not None else sys.argv[1:])])
    text = render(results, command.strip(), started, not a.no_producer_check)
    out = Path(a.out)
    old = out.read_text() if out.is_file() else ""
    if NOTES_HEADING in old:  # hand-written notes below the generated part survive a re-run
        text += "\n" + old[old.index(NOTES_HEADING):]
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
