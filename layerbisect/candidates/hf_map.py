"""HF tensor names → the canonical graph, as data.

HF conventions that differ from GGUF and are undone here (restated from ``config.py``):
- Gemma norms are stored as ``w`` and used as ``1 + w``: the loader adds ``hf_norm_offset``.
- llama/mistral Q/K rows are in HF's neox (half-split) order; the loader applies llama.cpp's
  permutation so the graph (``normal`` rope on GGUF weights) sees the same layout.
- Gemma 2/3 name their norms differently from llama: ``post_attention_layernorm`` is the
  sandwich norm after attention in Gemma, but the MLP input norm in llama/qwen.
"""

from __future__ import annotations

import re

PREFIXES = ("model.language_model.", "language_model.model.", "model.")

GLOBAL = {
    "embed_tokens.weight": "embed.weight",
    "norm.weight": "final_norm.weight",
}
LINEARS = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
NORMS_PLAIN = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "self_attn.q_norm.weight": "attn.q_norm.weight",
    "self_attn.k_norm.weight": "attn.k_norm.weight",
}
NORMS_SANDWICH = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attn_norm.weight",
    "pre_feedforward_layernorm.weight": "mlp_norm.weight",
    "post_feedforward_layernorm.weight": "post_mlp_norm.weight",
    "self_attn.q_norm.weight": "attn.q_norm.weight",
    "self_attn.k_norm.weight": "attn.k_norm.weight",
}
KV_SCALES = {  # compressed-tensors and ModelOpt spellings of the KV-cache scales
    "self_attn.k_scale": "k_scale",
    "self_attn.v_scale": "v_scale",
    "self_attn.k_proj.k_scale": "k_scale",
    "self_attn.v_proj.v_scale": "v_scale",
}
IGNORABLE = re.compile(r"(rotary_emb\.inv_freq|\.input_scale_inv$)")
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def strip_prefix(name: str) -> str:
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def norms_for(sandwich: bool) -> dict[str, str]:
    return NORMS_SANDWICH if sandwich else NORMS_PLAIN


def split_layer(name: str) -> tuple[int, str] | None:
    m = _LAYER.match(strip_prefix(name))
    return (int(m.group(1)), m.group(2)) if m else None
