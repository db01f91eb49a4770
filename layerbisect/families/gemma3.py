"""Gemma 3: Gemma 2 without softcaps, with QK-norm, 5 sliding : 1 global layers, a local rope base.

Sources: llama.cpp ``src/models/gemma3.cpp`` (``rope.freq_base_swa``, default 10 000; rope
scaling on global layers only); transformers ``modeling_gemma3.py`` (``rope_parameters``
per layer type).
"""

from __future__ import annotations

from ..spec import AttentionSpec, DenseFFNSpec, LayerSpec, ModelSpec, NormsSpec, Rope, RopeScaling
from . import gemma
from .base import Family, GGUFMeta, HFConfig, check_float
from .common import Dims, read_gguf, read_hf


class Gemma3(Family):
    name = "gemma3"
    gguf_archs = ("gemma3",)
    hf_model_types = ("gemma3", "gemma3_text")
    hf_names = gemma.SANDWICH_HF_NAMES

    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        d = read_gguf(meta)
        scale = gemma.gguf_query_scale(d.n_layers, d.d_model, d.n_heads[0], d.head_dim[0], big_layers=62)
        return self.build(d, sliding=gemma.sliding_from_gguf(meta, d.n_layers, 6), scale=scale,
                          window=meta.int("attention.sliding_window", required=True),
                          local_base=meta.float("rope.freq_base_swa", 10_000.0, lo=1e-6))

    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        d = read_hf(cfg)
        rp = cfg.get("rope_parameters")
        if isinstance(rp, dict) and isinstance(rp.get("sliding_attention"), dict):
            base = check_float(rp["sliding_attention"].get("rope_theta", 10_000.0), cfg.path,
                                "rope_parameters.sliding_attention.rope_theta", 1e-6, 1e30)
        else:
            base = cfg.float("rope_local_base_freq", 10_000.0, lo=1e-6)
        return self.build(d, sliding=gemma.sliding_from_hf(cfg, d.n_layers, 6),
                          scale=gemma.hf_query_scale(cfg, d.head_dim[0]), window=cfg.int("sliding_window"),
                          local_base=base)

    def build(self, d: Dims, *, sliding: list[bool], scale: float, window: int, local_base: float) -> ModelSpec:
        def rope(i: int) -> Rope:
            if sliding[i]:  # local layers: their own base, never scaled
                return Rope(base=local_base, style="neox", dim=d.head_dim[i], scaling=RopeScaling())
            return Rope(base=d.rope_base, style="neox", dim=d.head_dim[i], scaling=d.rope_scaling)

        layers = tuple(
            LayerSpec(
                index=i,
                mixer=AttentionSpec(
                    n_heads=d.n_heads[i], n_kv_heads=d.n_kv_heads[i], head_dim=d.head_dim[i], rope=rope(i),
                    scale=scale, window=window if sliding[i] else None, qk_norm=True,
                ),
                ffn=DenseFFNSpec(d_ff=d.d_ff[i], activation="gelu_tanh"),
                norms=NormsSpec(attn_post=True, ffn_post=True),
            )
            for i in range(d.n_layers)
        )
        return ModelSpec(family=self.name, arch="gemma3", vocab_size=d.vocab_size, d_model=d.d_model, layers=layers,
                         norm_eps=d.norm_eps, embed_scale=gemma.embed_scale(d.d_model),
                         tied_embeddings=d.tied_embeddings, hf_norm_offset=1.0, context_length=d.context_length)
