"""Gemma 2: sandwich norms, attention softcap 50 and final softcap 30, alternating sliding/global layers.

Sources: llama.cpp ``src/models/gemma2.cpp``; transformers ``modeling_gemma2.py``.
"""

from __future__ import annotations

from ..spec import AttentionSpec, DenseFFNSpec, LayerSpec, ModelSpec, NormsSpec, Rope
from . import gemma
from .base import Family, GGUFMeta, HFConfig
from .common import Dims, read_gguf, read_hf


class Gemma2(Family):
    name = "gemma2"
    gguf_archs = ("gemma2",)
    hf_model_types = ("gemma2",)
    hf_names = gemma.SANDWICH_HF_NAMES

    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        d = read_gguf(meta)
        scale = gemma.gguf_query_scale(d.n_layers, d.d_model, d.n_heads[0], d.head_dim[0], big_layers=46)
        return self.build(d, sliding=gemma.sliding_from_gguf(meta, d.n_layers, 2), scale=scale,
                          window=meta.int("attention.sliding_window", required=True),
                          attn_cap=meta.opt_float("attn_logit_softcapping", lo=1e-6) or 50.0,
                          final_cap=meta.opt_float("final_logit_softcapping", lo=1e-6) or 30.0)

    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        d = read_hf(cfg)
        return self.build(d, sliding=gemma.sliding_from_hf(cfg, d.n_layers, 2),
                          scale=gemma.hf_query_scale(cfg, d.head_dim[0]), window=cfg.int("sliding_window"),
                          attn_cap=cfg.opt_float("attn_logit_softcapping", lo=1e-6),  # 0 would divide by zero
                          final_cap=cfg.opt_float("final_logit_softcapping", lo=1e-6))

    def build(self, d: Dims, *, sliding: list[bool], scale: float, window: int, attn_cap: float | None,
              final_cap: float | None) -> ModelSpec:
        layers = tuple(
            LayerSpec(
                index=i,
                mixer=AttentionSpec(
                    n_heads=d.n_heads[i], n_kv_heads=d.n_kv_heads[i], head_dim=d.head_dim[i],
                    rope=Rope(base=d.rope_base, style="neox", dim=d.head_dim[i], scaling=d.rope_scaling),
                    scale=scale, window=window if sliding[i] else None, softcap=attn_cap,
                ),
                ffn=DenseFFNSpec(d_ff=d.d_ff[i], activation="gelu_tanh"),
                norms=NormsSpec(attn_post=True, ffn_post=True),
            )
            for i in range(d.n_layers)
        )
        return ModelSpec(family=self.name, arch="gemma2", vocab_size=d.vocab_size, d_model=d.d_model, layers=layers,
                         norm_eps=d.norm_eps, embed_scale=gemma.embed_scale(d.d_model), final_softcap=final_cap,
                         tied_embeddings=d.tied_embeddings, hf_norm_offset=1.0, context_length=d.context_length)
