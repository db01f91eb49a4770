"""Qwen3: Qwen2 without biases and with QK-norm (RMSNorm per head on q and k, before rope).

Sources: llama.cpp ``src/models/qwen3.cpp``; transformers ``modeling_qwen3.py``.
"""

from __future__ import annotations

from ..spec import AttentionSpec, DenseFFNSpec, LayerSpec, ModelSpec, Rope, default_scale
from .base import Family, GGUFMeta, HFConfig
from .common import Dims, read_gguf, read_hf


def qwen3_attention(d: Dims, i: int) -> AttentionSpec:
    """The Qwen3 family's attention (shared by Qwen3-MoE)."""
    return AttentionSpec(
        n_heads=d.n_heads[i], n_kv_heads=d.n_kv_heads[i], head_dim=d.head_dim[i],
        rope=Rope(base=d.rope_base, style="neox", dim=d.head_dim[i], scaling=d.rope_scaling),
        scale=default_scale(d.head_dim[i]), qk_norm=True,
    )


class Qwen3(Family):
    name = "qwen3"
    gguf_archs = ("qwen3",)
    hf_model_types = ("qwen3",)

    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        return self.build(read_gguf(meta))

    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        return self.build(read_hf(cfg))

    def build(self, d: Dims) -> ModelSpec:
        layers = tuple(LayerSpec(index=i, mixer=qwen3_attention(d, i), ffn=DenseFFNSpec(d_ff=d.d_ff[i]))
                       for i in range(d.n_layers))
        return ModelSpec(family=self.name, arch="qwen3", vocab_size=d.vocab_size, d_model=d.d_model, layers=layers,
                         norm_eps=d.norm_eps, tied_embeddings=d.tied_embeddings, context_length=d.context_length)
