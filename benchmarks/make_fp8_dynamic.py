"""Write an FP8_DYNAMIC compressed-tensors checkpoint from a BF16 HF checkpoint, without llmcompressor.

For timing the GPU path where the real producer is not installed (the lent GPU machine has
no package index). Same tensor names, dtypes, shapes and config as llmcompressor's FP8_DYNAMIC
(docs: ../shared/specs/checkpoints-observed.md): per-output-channel E4M3 weights with a BF16
scale amax/448 (a multiplier), dynamic per-token activations, lm_head ignored. `--check DIR`
compares the result byte for byte with a checkpoint llmcompressor wrote from the same weights:
on Gemma 3 270M the scales and most E4M3 codes are identical (the producer divides in BF16, as
here), but not all: llmcompressor also round-trips Gemma's norms through the 1+w form in BF16
and changes 1–3 % of the MLP codes. A stand-in for timing, not a fixture.

    python benchmarks/make_fp8_dynamic.py HF_DIR OUT_DIR [--check LLMCOMPRESSOR_FP8_DYNAMIC_DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from layerbisect.kernels.fp8 import FP8_MAX, cast_to_fp8

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ARGS = {"actorder": None, "block_structure": None, "group_size": None, "num_bits": 8, "observer_kwargs": {},
        "scale_dtype": None, "symmetric": True, "type": "float", "zp_dtype": None}
QCONFIG = {
    "config_groups": {"group_0": {
        "format": "float-quantized",
        "input_activations": {**ARGS, "dynamic": True, "observer": None, "strategy": "token"},
        "output_activations": None,
        "targets": ["Linear"],
        "weights": {**ARGS, "dynamic": False, "observer": "memoryless_minmax", "strategy": "channel"},
    }},
    "format": "float-quantized", "global_compression_ratio": None, "ignore": ["lm_head"], "kv_cache_scheme": None,
    "quant_method": "compressed-tensors", "quantization_status": "compressed", "sparsity_config": {},
    "transform_config": {}, "version": "0.19.0",
}


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) BF16 → (E4M3 (out, in), BF16 scale (out, 1)); scale = amax/448 per output channel."""
    s = (w.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).to(torch.bfloat16)
    s = torch.where(s == 0, torch.ones_like(s), s)
    # the producer divides in the weight dtype (BF16) before the cast: same here, for identical bytes
    return cast_to_fp8((w / s).float()), s


def convert(hf: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(hf.glob("*.safetensors")):
        tensors.update(load_file(f))
    result: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        mod = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and mod.endswith(LINEARS) and t.dim() == 2:
            result[name], result[mod + ".weight_scale"] = quantize_weight(t)
        else:
            result[name] = t
    save_file(result, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((hf / "config.json").read_text())
    cfg["quantization_config"] = QCONFIG
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for extra in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (hf / extra).is_file():
            shutil.copy(hf / extra, out / extra)
    return out


def check(ours: Path, theirs: Path) -> str:
    a = load_file(ours / "model.safetensors")
    b: dict[str, torch.Tensor] = {}
    for f in theirs.glob("*.safetensors"):
        b.update(load_file(f))
    names = sorted(k for k in b if k.endswith((".weight", ".weight_scale")))
    same = sum(1 for k in names if k in a and a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8)
               if a[k].dtype == torch.float8_e4m3fn else a[k], b[k].view(torch.uint8)
               if b[k].dtype == torch.float8_e4m3fn else b[k]))
    return f"{same}/{len(names)} weight and scale tensors identical to the producer's"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("hf", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--check", type=Path, default=None)
    a = ap.parse_args()
    convert(a.hf, a.out)
    if a.check:
        print(check(a.out, a.check))


if __name__ == "__main__":
    main()
