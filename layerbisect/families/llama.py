"""llama (and Mistral-style llama): pre-norm, GQA, SiLU MLP, "normal" (interleaved) rope in GGUF.

Sources: llama.cpp ``src/models/llama.cpp`` and ``conversion/llama.py`` (``LlamaModel.permute``
reorders HF Q/K rows for interleaved rope; llama3 rope scaling is written as a ``rope_freqs``
tensor); transformers ``modeling_llama.py``/``modeling_mistral.py`` (rotate-half rope on the
unpermuted rows, so the HF loader applies the same permutation).
"""

from __future__ import annotations

import torch

from ..spec import AttentionSpec, DenseFFNSpec, LayerSpec, ModelSpec, Rope, default_scale
from .base import Family, GGUFMeta, HFConfig, qk_permutation
from .common import Dims, read_gguf, read_hf


class Llama(Family):
    name = "llama"
    gguf_archs = ("llama",)
    hf_model_types = ("llama", "mistral")

    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        return self.build(read_gguf(meta), rope_freqs="rope_freqs.weight" in meta.tensors)

    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        return self.build(read_hf(cfg, tied_default=False), rope_freqs=False)

    def build(self, d: Dims, *, rope_freqs: bool) -> ModelSpec:
        layers = tuple(
            LayerSpec(
                index=i,
                mixer=AttentionSpec(
                    n_heads=d.n_heads[i], n_kv_heads=d.n_kv_heads[i], head_dim=d.head_dim[i],
                    rope=Rope(base=d.rope_base, style="normal", dim=d.rope_dim or d.head_dim[i],
                              scaling=d.rope_scaling, freq_factors=rope_freqs),
                    scale=default_scale(d.head_dim[i]),
                ),
                ffn=DenseFFNSpec(d_ff=d.d_ff[i]),
            )
            for i in range(d.n_layers)
        )
        return ModelSpec(family=self.name, arch="llama", vocab_size=d.vocab_size, d_model=d.d_model, layers=layers,
                         norm_eps=d.norm_eps, tied_embeddings=d.tied_embeddings, context_length=d.context_length)

    def hf_row_permutation(self, module: str, spec: ModelSpec) -> torch.Tensor | None:
        if not module.endswith(("attn.q_proj", "attn.k_proj")):
            return None
        a = spec.layers[int(module.split(".")[1])].mixer
        heads = a.n_heads if module.endswith("q_proj") else a.n_kv_heads
        return qk_permutation(heads, a.head_dim)
