"""Tiny Gemma 4 checkpoints with the real vocabulary, and their GGUFs by llama.cpp's own converter.

Three variants, each exercising a different part of the family (``families/gemma4.py``):

``dense``  6 layers, 5 sliding : 1 global; the global layer has its own head_dim (32 vs 16,
           ``per_layer_config``) and one kv head with ``attention_k_eq_v`` (no v_proj), as
           the 31B does.
``moe``    the same with ``enable_moe_block``: every layer runs a dense MLP beside 8 experts
           (top 2), as the 26B-A4B does.
``ple``    per-layer input embeddings (``hidden_size_per_layer_input`` 16), the last 2 layers
           reading shared KV (``num_kv_shared_layers``) with double-wide MLPs
           (``use_double_wide_mlp``), as the E2B/E4B do. Layer types s s s G s G: the last
           non-shared layer is global and the one before it sliding, the layout where
           transformers and llama.cpp pick the same KV source layer.

Sizes: hidden 64, 4 heads, head_dim 16 (global 32), sliding window 8 (shorter than a test
prompt), final logit softcap 30, the ``gemma-4`` vocabulary (262 144 tokens, rebuilt from
llama.cpp's vocab GGUF by ``producers/vocab.py``): the embedding dominates the size (an F32
GGUF is ~70 MB, ~170 MB with the per-layer table); llama.cpp's converter takes 1-2 min per
model on a busy CPU, so everything is cached (``cached_tiny_gemma4``, ``tiny_gemma4_gguf``).

The seeded init makes the conventions visible, not just small weights:
- norm gains U(0.5, 1.5), q/k-norm gains U(0.2, 0.4): Gemma 4 stores the effective gain ``w``
  (``x * w``); an engine that applies Gemma 2/3's ``x * (1 + w)`` changes every gain by a
  different factor (1.7-6x). The small q/k gains keep attention (unscaled: ``scaling = 1.0``)
  soft enough that FP8 noise does not flip it: with gains ~1 the tiny model is chaotic
  (an FP8 candidate agreed on 15% of top-1 tokens).
- ``layer_scalar`` U(0.7, 1.0) (all below 1, as in the released models, whose are ~0.03-0.1),
  router ``scale`` and ``per_expert_scale`` U(0.5, 1.5): loading any of them as 1.0 changes
  the output.
- linear weights N(0, 1/in), embeddings N(0, 0.7²): activations O(1), logits spread over
  ~±25 so the final softcap (30) bends them without saturating them, with a top-1 margin of
  ~2 logits.
Weights are saved in BF16 (what the producers quantize); the F32 GGUF holds the same values.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from layerbisect.errors import InputError
from layerbisect.producers.cache import build_atomic, cache_dir, options_key

VARIANTS: tuple[str, ...] = ("dense", "moe", "ple")
_VERSION = "2"  # bump when the configs or the init change


def gemma4_config(variant: str) -> Any:
    """The ``Gemma4TextConfig`` of a tiny variant (see the module notes)."""
    from transformers import Gemma4TextConfig

    common: dict[str, Any] = dict(
        vocab_size=262_144, vocab_size_per_layer_input=262_144, hidden_size=64, intermediate_size=128,
        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
        final_logit_softcapping=30.0, max_position_embeddings=256, hidden_size_per_layer_input=0,
        rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
    )
    if variant == "dense":
        return Gemma4TextConfig(**common, attention_k_eq_v=True, global_head_dim=32, num_global_key_value_heads=1)
    if variant == "moe":
        return Gemma4TextConfig(**{**common, "intermediate_size": 64}, attention_k_eq_v=True, global_head_dim=32,
                                num_global_key_value_heads=1, enable_moe_block=True, num_experts=8, top_k_experts=2,
                                moe_intermediate_size=32)
    if variant == "ple":
        s, g = "sliding_attention", "full_attention"
        return Gemma4TextConfig(**{**common, "hidden_size_per_layer_input": 16}, global_head_dim=32,
                                layer_types=[s, s, s, g, s, g], num_kv_shared_layers=2, use_double_wide_mlp=True)
    raise InputError(variant, f"unknown tiny Gemma 4 variant; choose one of {', '.join(VARIANTS)}")


def randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n.endswith("layer_scalar")]
    with torch.no_grad():
        for name, p in sorted(named, key=lambda x: x[0]):
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(torch.empty(p.shape).uniform_(0.2, 0.4, generator=g))
            elif name.endswith(("norm.weight", "router.scale", "per_expert_scale")):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif name.endswith("layer_scalar"):
                p.copy_(torch.empty(p.shape).uniform_(0.7, 1.0, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def make_tiny_gemma4(variant: str, out_dir: str | Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write a tiny Gemma 4 checkpoint (config, safetensors, the gemma-4 tokenizer) to ``out_dir``."""
    from transformers import AutoModelForCausalLM

    from layerbisect.producers.vocab import cached_tokenizer

    if dtype not in ("float32", "bfloat16"):
        raise InputError("dtype", f"{dtype!r} is not one of float32, bfloat16")
    cfg = gemma4_config(variant)
    tok = cached_tokenizer("gemma-4")
    torch.manual_seed(seed)  # transformers' own init runs first; ours overwrites every parameter
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    randomize(model, seed)
    model = model.to(getattr(torch, dtype))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in sorted(tok.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    return out


def cached_tiny_gemma4(variant: str, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """:func:`make_tiny_gemma4` built once into ``cache_dir()/hf/gemma4-<variant>-<key8>/``."""
    import transformers

    gemma4_config(variant)  # validates the name before anything is built
    key = options_key(kind="tiny-gemma4", variant=variant, seed=seed, dtype=dtype, v=_VERSION,
                      transformers=transformers.__version__)
    final = cache_dir() / "hf" / f"gemma4-{variant}-{key}"
    return build_atomic(final, lambda tmp: make_tiny_gemma4(variant, tmp, seed=seed, dtype=dtype) and None)


def tiny_gemma4_gguf(variant: str, *, seed: int = 0) -> Path:
    """The F32 GGUF llama.cpp's ``convert_hf_to_gguf.py`` writes from :func:`cached_tiny_gemma4` (cached)."""
    from layerbisect.producers.llamacpp import converted_gguf

    return converted_gguf(cached_tiny_gemma4(variant, seed=seed), outtype="f32")


def tiny_gemma4(variant: str, *, seed: int = 0) -> dict[str, Path]:
    """{"hf": BF16 HF dir, "gguf": F32 GGUF by llama.cpp} of a variant, both cached."""
    return {"hf": cached_tiny_gemma4(variant, seed=seed), "gguf": tiny_gemma4_gguf(variant, seed=seed)}


def describe(variant: str) -> dict[str, Any]:
    """The config of a variant as plain JSON data (for reports and docs)."""
    return json.loads(gemma4_config(variant).to_json_string())


__all__ = ["VARIANTS", "cached_tiny_gemma4", "describe", "gemma4_config", "make_tiny_gemma4", "randomize",
           "tiny_gemma4", "tiny_gemma4_gguf"]
