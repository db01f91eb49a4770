"""Gemma 4 (dense, MoE, per-layer input embeddings, shared KV), from GGUF metadata or a HF config.

Sources: transformers 5.17 ``models/gemma4/modeling_gemma4.py`` + ``configuration_gemma4.py``;
llama.cpp ``src/models/gemma4.cpp`` (graph, tensor loading), ``src/llama-model.cpp`` (which
layer a shared-KV layer reads), ``conversion/gemma.py`` (``Gemma4Model``: what the converter
writes). What differs from Gemma 2/3:

- Norms are plain ``x * w`` (``Gemma4RMSNorm``): HF stores the effective gain, and the
  converter's ``norm_shift`` is 0, so ``hf_norm_offset`` is 0 and GGUF norms are ``w`` too.
  The value norm is a weightless RMSNorm per head; q/k norms have weights.
- Attention is not scaled (``self.scaling = 1.0``; llama.cpp ``f_attention_scale = 1.0``).
- Sliding and global layers differ in head_dim (HF ``per_layer_config``; GGUF
  ``attention.key_length`` for global layers and ``key_length_swa`` for sliding ones) and may
  differ in kv heads (``head_count_kv`` array).
- Rope per layer type: sliding layers rotate the whole head with their own base
  (``rope.freq_base_swa``); global layers use "proportional" rope: frequencies
  ``base^(-2j/head_dim)`` over the whole head, only the first ``partial_rotary_factor·head_dim/2``
  non-zero (``Rope.active_pairs``). llama.cpp expresses the zeros with a ``rope_freqs`` tensor
  (factor 1e30 on the unrotated pairs, global layers only: ``Rope.freq_factors``).
- ``attention_k_eq_v`` (global layers only): no v_proj; v is k before its norm, then the
  value norm. A GGUF shows it as a global layer without ``attn_v``.
- Shared KV (``num_kv_shared_layers``): the last N layers read the keys/values of an earlier
  layer. transformers: the last non-shared layer of the same type; llama.cpp: layer
  ``n - N - 2`` for sliding and ``n - N - 1`` for global layers. The two agree when the last
  non-shared layer is global and the one before it sliding, as in the released models; each
  reader follows its own runtime, so a disagreement shows up as a divergence.
- ``use_double_wide_mlp``: shared-KV layers have a twice as wide MLP (GGUF
  ``feed_forward_length`` array).
- MoE layers (``enable_moe_block``) run a dense MLP beside the experts: ``ParallelMoESpec``.
- Per-layer input embeddings when ``hidden_size_per_layer_input`` > 0 (``graph/per_layer.py``).
- Every layer's output is multiplied by ``layer_scalar`` (GGUF ``layer_output_scale``).
- Final logit softcap (``final_logit_softcapping``); embeddings × sqrt(d).
"""

from __future__ import annotations

from ..errors import InputError
from ..graph.names import Fused, Stacked, T
from ..spec import (
    AttentionSpec,
    DenseFFNSpec,
    LayerSpec,
    ModelSpec,
    NormsSpec,
    ParallelMoESpec,
    Rope,
    RopeScaling,
    RouterSpec,
)
from . import gemma
from .base import MAX_DIM, Family, GGUFMeta, HFConfig

NAMES_HF = {
    **gemma.SANDWICH_HF_NAMES,
    "layers.{i}.layer_scalar": "layers.{i}.layer_scalar",
    # the MoE block: router and experts hang off the decoder layer, not off ``mlp``
    "layers.{i}.mlp.router": "layers.{i}.router.proj",
    "layers.{i}.mlp.router_scale": "layers.{i}.router.scale",
    "layers.{i}.mlp.expert_scale": "layers.{i}.router.per_expert_scale",
    "layers.{i}.mlp.experts.{e}.gate_proj": "layers.{i}.experts.{e}.gate_proj",
    "layers.{i}.mlp.experts.{e}.up_proj": "layers.{i}.experts.{e}.up_proj",
    "layers.{i}.mlp.experts.{e}.down_proj": "layers.{i}.experts.{e}.down_proj",
    "layers.{i}.mlp.post_norm_1": "layers.{i}.post_feedforward_layernorm_1",
    "layers.{i}.mlp.pre_norm_2": "layers.{i}.pre_feedforward_layernorm_2",
    "layers.{i}.mlp.post_norm_2": "layers.{i}.post_feedforward_layernorm_2",
    # per-layer input embeddings
    "per_layer.embed": "embed_tokens_per_layer",
    "per_layer.proj": "per_layer_model_projection",
    "per_layer.norm": "per_layer_projection_norm",
    "layers.{i}.ple.gate": "layers.{i}.per_layer_input_gate",
    "layers.{i}.ple.proj": "layers.{i}.per_layer_projection",
    "layers.{i}.ple.post_norm": "layers.{i}.post_per_layer_input_norm",
}
# What transformers' save_pretrained writes: 3-D fused experts (E, 2F, d) gate rows first, and (E, d, F).
FUSED_HF = {
    "layers.{i}.mlp.experts.{e}.gate_proj": Fused("layers.{i}.experts.gate_up_proj", 0, 2),
    "layers.{i}.mlp.experts.{e}.up_proj": Fused("layers.{i}.experts.gate_up_proj", 1, 2),
    "layers.{i}.mlp.experts.{e}.down_proj": Fused("layers.{i}.experts.down_proj"),
}
# What llama.cpp's converter writes from those: one stacked and fused ``ffn_gate_up_exps`` per layer.
NAMES_GGUF = {
    "layers.{i}.mlp.experts.{e}.gate_proj": Stacked(T.FFN_GATE_UP_EXP, 0, 2),
    "layers.{i}.mlp.experts.{e}.up_proj": Stacked(T.FFN_GATE_UP_EXP, 1, 2),
}

ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "silu": "silu"}


class Gemma4(Family):
    name = "gemma4"
    gguf_archs = ("gemma4",)
    hf_model_types = ("gemma4", "gemma4_text")
    hf_names = NAMES_HF
    gguf_names = NAMES_GGUF
    hf_fused = FUSED_HF

    # -- GGUF ----------------------------------------------------------------------------------
    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        n = meta.n_layers()
        d = meta.int("embedding_length", required=True)
        sliding = meta.flags("attention.sliding_window_pattern", n)
        if sliding is None:
            raise InputError(meta.path, f"GGUF metadata lacks {meta.key('attention.sliding_window_pattern')!r}")
        heads = meta.per_layer("attention.head_count", n, required=True, lo=1)
        kv = meta.per_layer("attention.head_count_kv", n, heads[0], lo=1)
        hd_global = meta.int("attention.key_length", required=True)
        hd_swa = meta.int("attention.key_length_swa", required=True)
        ff = meta.per_layer("feed_forward_length", n, required=True, lo=1)
        shared = meta.int("attention.shared_kv_layers", 0, lo=0, hi=n)
        first_shared = n - shared

        def source(i: int) -> int | None:  # llama.cpp's layer_reuse_cb (llama-model.cpp)
            if i < first_shared:
                return None
            j = first_shared - (2 if sliding[i] else 1)
            if j < 0:
                raise InputError(meta.path, f"{shared} shared-KV layers leave no layer to share from")
            return j

        freqs = "rope_freqs.weight" in meta.tensors
        base, base_swa = meta.float("rope.freq_base", 10_000.0, lo=1e-6), meta.float("rope.freq_base_swa", 10_000.0,
                                                                                       lo=1e-6)
        dim = meta.int("rope.dimension_count", hd_global)
        dim_swa = meta.int("rope.dimension_count_swa", hd_swa)
        window = meta.int("attention.sliding_window", required=True) if any(sliding) else None
        ple = meta.int("embedding_length_per_layer_input", 0, lo=0)
        n_exp = meta.int("expert_count", 0, lo=0)
        router = None
        if n_exp:
            router = RouterSpec(top_k=meta.int("expert_used_count", required=True, hi=n_exp), norm_topk=True)
        layers = []
        for i in range(n):
            hd = hd_swa if sliding[i] else hd_global
            rope = (Rope(base=base_swa, style="neox", dim=dim_swa) if sliding[i]
                    else Rope(base=base, style="neox", dim=dim, freq_factors=freqs))
            src = source(i)
            k_eq_v = src is None and f"blk.{i}.attn_v.weight" not in meta.tensors
            moe = f"blk.{i}.ffn_gate_inp.weight" in meta.tensors
            if moe and router is None:
                raise InputError(meta.path, f"blk.{i}.ffn_gate_inp.weight but no {meta.key('expert_count')!r}")
            layers.append(self.layer(
                i, d, heads[i], kv[i], hd, rope, window=window if sliding[i] else None, k_eq_v=k_eq_v,
                kv_source=src, d_ff=ff[i],
                moe=(n_exp, meta.int("expert_feed_forward_length", required=True), router) if moe else None,
                act="gelu_tanh", ple=ple, out_scale=f"blk.{i}.layer_output_scale.weight" in meta.tensors))
        return ModelSpec(
            family=self.name, arch="gemma4", vocab_size=meta.n_vocab, d_model=d, layers=tuple(layers),
            norm_eps=meta.float("attention.layer_norm_rms_epsilon", 1e-6, lo=0.0, hi=1.0),
            embed_scale=gemma.embed_scale(d), final_softcap=meta.opt_float("final_logit_softcapping"),
            tied_embeddings="output.weight" not in meta.tensors, hf_norm_offset=0.0,
            context_length=meta.int("context_length", 8192, hi=1 << 31),
            per_layer_input=ple, per_layer_vocab=meta.n_vocab if ple else 0,
        )

    # -- HF ------------------------------------------------------------------------------------
    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        n = cfg.n_layers()
        d = cfg.int("hidden_size")
        types = cfg.layer_types(n) or ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)]
        bad = sorted(set(types) - {"sliding_attention", "full_attention"})
        if bad:
            raise InputError(cfg.path, f"layer_types has {bad[0]!r} (Gemma 4 layers are sliding_attention or "
                                       "full_attention)")
        if cfg.get("attention_bias", False):
            raise InputError(cfg.path, "attention_bias = true is not supported for gemma4 (no released model has it)")
        if cfg.get("use_bidirectional_attention") == "all":
            raise InputError(cfg.path, "use_bidirectional_attention = 'all' is not a causal language model")
        act = ACTIVATIONS.get(str(cfg.get("hidden_activation", "gelu_pytorch_tanh")))
        if act is None:
            raise InputError(cfg.path, f"hidden_activation {cfg.get('hidden_activation')!r} is not supported "
                                       f"(supported: {', '.join(ACTIVATIONS)})")
        heads = [cfg.int("num_attention_heads", layer=i) for i in range(n)]
        kv = [cfg.int("num_key_value_heads", heads[i], layer=i) for i in range(n)]
        hd = [cfg.int("head_dim", d // heads[i], layer=i) for i in range(n)]
        shared = cfg.int("num_kv_shared_layers", 0, lo=0, hi=n)
        first_shared = n - shared

        def source(i: int) -> int | None:  # transformers: the last non-shared layer of the same type
            if i < first_shared:
                return None
            same = [j for j in range(first_shared) if types[j] == types[i]]
            if not same:
                raise InputError(cfg.path, f"layer {i} shares KV but no earlier {types[i]} layer has its own")
            return same[-1]

        double = bool(cfg.get("use_double_wide_mlp", False))
        moe = None
        if cfg.get("enable_moe_block", False):
            n_exp = cfg.int("num_experts")
            moe = (n_exp, cfg.int("moe_intermediate_size"),
                   RouterSpec(top_k=cfg.int("top_k_experts", hi=n_exp), norm_topk=True))
        ple = cfg.int("hidden_size_per_layer_input", 0, lo=0)
        layers = []
        for i in range(n):
            slides = types[i] == "sliding_attention"
            rp = cfg.rope(types[i])
            src = source(i)
            ff = cfg.int("intermediate_size", layer=i) * (2 if double and i >= first_shared > 0 else 1)
            layers.append(self.layer(
                i, d, heads[i], kv[i], hd[i], self.hf_rope(cfg, rp, hd[i]),
                window=cfg.int("sliding_window") if slides else None,
                k_eq_v=bool(cfg.get("attention_k_eq_v", False)) and not slides and src is None, kv_source=src,
                d_ff=ff, moe=moe, act=act, ple=ple, out_scale=True))
        return ModelSpec(
            family=self.name, arch="gemma4", vocab_size=cfg.int("vocab_size", hi=MAX_DIM * 4), d_model=d,
            layers=tuple(layers), norm_eps=cfg.float("rms_norm_eps", 1e-6, lo=0.0, hi=1.0),
            embed_scale=gemma.embed_scale(d), final_softcap=cfg.opt_float("final_logit_softcapping"),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", True)), hf_norm_offset=0.0,
            context_length=cfg.int("max_position_embeddings", 8192, hi=1 << 31), per_layer_input=ple,
            per_layer_vocab=cfg.int("vocab_size_per_layer_input", cfg.get("vocab_size"), hi=MAX_DIM * 4) if ple else 0,
        )

    @staticmethod
    def hf_rope(cfg: HFConfig, rp: dict, head_dim: int) -> Rope:
        """transformers' rope of one layer type: "default" (whole head) or "proportional" (see the module notes)."""
        kind = rp.get("rope_type") or "default"
        base = float(rp.get("rope_theta", 10_000.0))
        factor = float(rp.get("factor", 1.0))
        scaling = RopeScaling(kind="linear", factor=factor) if factor != 1.0 else RopeScaling()
        if kind == "default":
            return Rope(base=base, style="neox", dim=head_dim)
        if kind == "proportional":
            pairs = int(float(rp.get("partial_rotary_factor", 1.0)) * head_dim // 2)
            return Rope(base=base, style="neox", dim=head_dim, active_pairs=pairs if pairs < head_dim // 2 else None,
                        scaling=scaling)
        raise InputError(cfg.path, f"rope_type {kind!r} is not supported for gemma4 "
                                   "(supported: default, proportional)")

    @staticmethod
    def layer(i: int, d: int, heads: int, kv: int, hd: int, rope: Rope, *, window: int | None, k_eq_v: bool,
              kv_source: int | None, d_ff: int, moe: tuple[int, int, RouterSpec] | None, act: str, ple: int,
              out_scale: bool) -> LayerSpec:
        attn = AttentionSpec(n_heads=heads, n_kv_heads=kv, head_dim=hd, rope=rope, scale=1.0, window=window,
                             qk_norm=True, v_norm=True, k_eq_v=k_eq_v, kv_source=kv_source)
        ffn: DenseFFNSpec | ParallelMoESpec
        if moe is None:
            ffn = DenseFFNSpec(d_ff=d_ff, activation=act)  # type: ignore[arg-type]
        else:
            n_exp, d_ff_exp, router = moe
            ffn = ParallelMoESpec(d_ff=d_ff, n_experts=n_exp, d_ff_expert=d_ff_exp, router=router,
                                  activation=act)  # type: ignore[arg-type]
        return LayerSpec(index=i, mixer=attn, ffn=ffn, norms=NormsSpec(attn_post=True, ffn_post=True),
                         per_layer_input=ple, out_scale=out_scale)

