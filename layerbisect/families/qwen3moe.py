"""Qwen3-MoE: Qwen3's attention, and a softmax top-k mixture of experts in the FFN slot.

Sources: transformers ``modeling_qwen3_moe.py`` (``Qwen3MoeTopKRouter``: softmax over
``num_experts`` logits, top ``num_experts_per_tok``, renormalized when ``norm_topk_prob``;
experts summed in index order; dense MLP layers where ``mlp_only_layers`` or
``decoder_sparse_step`` say so); llama.cpp ``src/models/qwen3moe.cpp`` (``build_moe_ffn`` with
softmax gating and ``norm_w = true``: llama.cpp always renormalizes the top-k weights for
qwen3moe and has no dense layers; its converter refuses ``mlp_only_layers``). A GGUF does not
store ``norm_topk_prob``, so the reference follows llama.cpp (renormalized), as Qwen3's released
MoE checkpoints set it.
"""

from __future__ import annotations

from ..spec import DenseFFNSpec, LayerSpec, ModelSpec, MoESpec, RouterSpec
from .base import Family, GGUFMeta, HFConfig
from .common import Dims, read_gguf, read_hf
from .qwen3 import qwen3_attention


class Qwen3Moe(Family):
    name = "qwen3moe"
    gguf_archs = ("qwen3moe",)
    hf_model_types = ("qwen3_moe",)

    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        d = read_gguf(meta, ff_required=False)
        n_exp = meta.int("expert_count", required=True)
        top_k = meta.int("expert_used_count", required=True, hi=n_exp)
        scale = meta.float("expert_weights_scale", 0.0, lo=0.0) or 1.0
        router = RouterSpec(top_k=top_k, norm_topk=True, routed_scale=scale)
        moe = [f"blk.{i}.ffn_gate_inp.weight" in meta.tensors for i in range(d.n_layers)]
        return self.build(d, moe, n_exp, meta.int("expert_feed_forward_length", required=True), router)

    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        d = read_hf(cfg, tied_default=False)
        n_exp = cfg.int("num_experts", cfg.get("num_local_experts"))
        top_k = cfg.int("num_experts_per_tok", hi=n_exp)
        dense_layers = set(cfg.int_list("mlp_only_layers"))
        step = cfg.int("decoder_sparse_step", 1)
        moe = [i not in dense_layers and (i + 1) % step == 0 for i in range(d.n_layers)]
        router = RouterSpec(top_k=top_k, norm_topk=cfg.bool("norm_topk_prob", False))
        return self.build(d, moe, n_exp, cfg.int("moe_intermediate_size"), router)

    def build(self, d: Dims, moe: list[bool], n_experts: int, d_ff_expert: int, router: RouterSpec) -> ModelSpec:
        def ffn(i: int) -> DenseFFNSpec | MoESpec:
            if moe[i]:
                return MoESpec(n_experts=n_experts, d_ff_expert=d_ff_expert, router=router)
            return DenseFFNSpec(d_ff=d.d_ff[i])

        layers = tuple(LayerSpec(index=i, mixer=qwen3_attention(d, i), ffn=ffn(i)) for i in range(d.n_layers))
        return ModelSpec(family=self.name, arch="qwen3moe", vocab_size=d.vocab_size, d_model=d.d_model,
                         layers=layers, norm_eps=d.norm_eps, tied_embeddings=d.tied_embeddings,
                         context_length=d.context_length)
