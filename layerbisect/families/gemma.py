"""What Gemma 2 and Gemma 3 share: sandwich norms, (1 + w) norms in HF, sqrt(d) embedding scale, sliding layers.

Sources: llama.cpp ``src/models/gemma2.cpp``, ``gemma3.cpp`` and ``conversion/gemma.py``
(the converter stores norms as ``1 + w``; the sliding pattern and the 27B query scaling are
hard-coded in ``llama-model.cpp`` when the GGUF does not state them); transformers
``modeling_gemma2.py``/``modeling_gemma3.py`` (``Gemma2RMSNorm``: ``x * (1 + w)``;
``query_pre_attn_scalar``; ``layer_types``).
"""

from __future__ import annotations

import math

from ..graph.names import HF
from .base import MAX_LAYERS, GGUFMeta, HFConfig

# HF Gemma names its sandwich norms differently from llama: post_attention_layernorm is the
# norm *after* attention here, and the MLP input norm is pre_feedforward_layernorm.
SANDWICH_HF_NAMES = {
    "layers.{i}.post_attn_norm": "layers.{i}.post_attention_layernorm",
    "layers.{i}.mlp_norm": "layers.{i}.pre_feedforward_layernorm",
    "layers.{i}.post_mlp_norm": "layers.{i}.post_feedforward_layernorm",
}
assert set(SANDWICH_HF_NAMES) - set(HF) == {"layers.{i}.post_attn_norm", "layers.{i}.post_mlp_norm"}


def embed_scale(d_model: int) -> float:
    """Gemma multiplies embeddings by sqrt(d_model) (transformers: a tensor in the model's dtype)."""
    return math.sqrt(d_model)


def sliding_from_gguf(meta: GGUFMeta, n: int, pattern: int) -> list[bool]:
    """Per-layer sliding flags: the GGUF's ``attention.sliding_window_pattern`` if present, else llama.cpp's
    hard-coded pattern (``set_swa_pattern(pattern)``: layer i slides unless (i + 1) % pattern == 0)."""
    flags = meta.flags("attention.sliding_window_pattern", n)
    return flags if flags is not None else [(i + 1) % pattern != 0 for i in range(n)]


def sliding_from_hf(cfg: HFConfig, n: int, pattern: int) -> list[bool]:
    lt = cfg.layer_types(n)
    if lt is not None:
        return [t == "sliding_attention" for t in lt]
    p = cfg.int("sliding_window_pattern", pattern, lo=1, hi=MAX_LAYERS)
    return [(i + 1) % p != 0 for i in range(n)]


def gguf_query_scale(n_layers: int, d_model: int, n_heads: int, head_dim: int, big_layers: int) -> float:
    """llama.cpp: 1/sqrt(head_dim), except the 27B models (``big_layers`` layers) scale by d_model / n_heads;
    GGUF does not store ``query_pre_attn_scalar``."""
    return 1.0 / math.sqrt(d_model / n_heads if n_layers == big_layers else head_dim)


def hf_query_scale(cfg: HFConfig, head_dim: int) -> float:
    q = cfg.opt_float("query_pre_attn_scalar", lo=1e-6)
    return 1.0 / math.sqrt(q if q else head_dim)
