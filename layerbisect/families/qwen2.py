"""Qwen2: llama's layer with q/k/v biases and NeoX (rotate-half) rope; tied embeddings by default.

Sources: llama.cpp ``src/models/qwen2.cpp``; transformers ``modeling_qwen2.py``.
"""

from __future__ import annotations

from ..spec import AttentionSpec, DenseFFNSpec, LayerSpec, ModelSpec, Rope, default_scale
from .base import Family, GGUFMeta, HFConfig
from .common import Dims, read_gguf, read_hf


class Qwen2(Family):
    name = "qwen2"
    gguf_archs = ("qwen2",)
    hf_model_types = ("qwen2",)

    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        return self.build(read_gguf(meta))

    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        return self.build(read_hf(cfg))

    def build(self, d: Dims) -> ModelSpec:
        layers = tuple(
            LayerSpec(
                index=i,
                mixer=AttentionSpec(
                    n_heads=d.n_heads[i], n_kv_heads=d.n_kv_heads[i], head_dim=d.head_dim[i],
                    rope=Rope(base=d.rope_base, style="neox", dim=d.head_dim[i], scaling=d.rope_scaling),
                    scale=default_scale(d.head_dim[i]), qkv_bias=True,
                ),
                ffn=DenseFFNSpec(d_ff=d.d_ff[i]),
            )
            for i in range(d.n_layers)
        )
        return ModelSpec(family=self.name, arch="qwen2", vocab_size=d.vocab_size, d_model=d.d_model, layers=layers,
                         norm_eps=d.norm_eps, tied_embeddings=d.tied_embeddings, context_length=d.context_length)
