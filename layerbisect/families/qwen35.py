"""Qwen3.5 (dense and MoE): Gated DeltaNet linear-attention layers between gated full-attention layers.

Sources: transformers ``models/qwen3_5/`` and ``models/qwen3_5_moe/`` (``layer_types`` of
``linear_attention``/``full_attention``; ``Qwen3_5RMSNorm`` computes ``x·(1 + w)`` while the
DeltaNet's ``Qwen3_5RMSNormGated`` computes ``x·w``; ``Qwen3_5Attention``: ``q_proj`` yields
per head [q | gate], QK-norm, partial rotary ``partial_rotary_factor`` (0.25) in NEOX halves,
``attn·sigmoid(gate)`` before ``o_proj``; ``Qwen3_5MoeSparseMoeBlock``: softmax top-k router,
always renormalized, plus a shared expert scaled by ``sigmoid(shared_expert_gate(x))``);
llama.cpp ``src/models/qwen35.cpp``/``qwen35moe.cpp`` and ``conversion/qwen.py``.

llama.cpp's converter (``Qwen3NextModel.modify_tensors``, ``_LinearAttentionVReorderBase``)
stores norms as ``1 + w`` except the DeltaNet's gated norm, ``A_log`` as ``ssm_a = -exp(A_log)``,
``dt_bias`` as ``ssm_dt.bias``, the conv weight squeezed to (C, K), and — when there are more
value heads than key heads — the value heads in *tiled* order (value head r·Hk + h is HF's
h·(Hv/Hk) + r, so ggml's broadcast repeat can pair them with the key heads) in the v rows of
``attn_qkv``, the rows of ``attn_gate`` (z), ``ssm_beta``/``ssm_alpha``, ``ssm_a``,
``ssm_dt``, the v channels of ``ssm_conv1d`` and the columns of ``ssm_out``. The graph keeps
transformers' layout (grouped value heads, ``A_log``, (C, 1, K)) so a quantized candidate's
packed weights load without any permutation; ``gguf_transform`` undoes the converter's
changes on the FP32 reference side. The converter must run with ``--no-mtp`` (or the MTP
layers are written as extra blocks, which the graph does not run and the loader refuses).
"""

from __future__ import annotations

from collections.abc import Callable

import gguf
import torch

from ..errors import InputError
from ..spec import (
    AttentionSpec,
    DenseFFNSpec,
    GatedDeltaNetSpec,
    LayerSpec,
    ModelSpec,
    MoESpec,
    Rope,
    RouterSpec,
    default_scale,
)
from .base import Family, GGUFMeta, HFConfig
from .common import Dims, read_gguf, read_hf

T = gguf.MODEL_TENSOR

# arch → whether the converter reorders value heads to tiled order (qwen3next does not)
_TILED_V_HEADS = {"qwen35": True, "qwen35moe": True}


def untile_v_heads(t: torch.Tensor, dim: int, n_k_heads: int, rep: int, head_dim: int) -> torch.Tensor:
    """Inverse of llama.cpp's ``_reorder_v_heads`` along ``dim``: tiled (r, h) value heads back to grouped (h, r)."""
    shape = list(t.shape)
    dim = dim % len(shape)
    t = t.reshape(*shape[:dim], rep, n_k_heads, head_dim, *shape[dim + 1:])
    return t.transpose(dim, dim + 1).reshape(shape)


def tile_v_heads(t: torch.Tensor, dim: int, n_k_heads: int, rep: int, head_dim: int) -> torch.Tensor:
    """llama.cpp's ``_reorder_v_heads``: grouped (h, r) value heads to tiled (r, h) order along ``dim``."""
    shape = list(t.shape)
    dim = dim % len(shape)
    t = t.reshape(*shape[:dim], n_k_heads, rep, head_dim, *shape[dim + 1:])
    return t.transpose(dim, dim + 1).reshape(shape)


def deltanet_spec(n_k: int, n_v: int, dk: int, dv: int, kernel: int, eps: float) -> GatedDeltaNetSpec:
    return GatedDeltaNetSpec(n_k_heads=n_k, n_v_heads=n_v, head_k_dim=dk, head_v_dim=dv, conv_kernel=kernel,
                             norm_eps=eps)


class Qwen35(Family):
    name = "qwen35"
    gguf_archs = ("qwen35", "qwen35moe")
    hf_model_types = ("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")
    # llama.cpp names the pre-FFN norm of this family attn_post_norm (HF post_attention_layernorm)
    gguf_names = {"layers.{i}.mlp_norm": T.ATTN_POST_NORM}

    # -- GGUF ------------------------------------------------------------------------------------
    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        d = read_gguf(meta, ff_required=False)
        n = d.n_layers
        recurrent = meta.get("attention.recurrent_layers")
        if isinstance(recurrent, list):
            if len(recurrent) != n:
                raise InputError(meta.path, f"{meta.key('attention.recurrent_layers')} has {len(recurrent)} "
                                            f"entries for {n} layers")
            linear = [bool(x) for x in recurrent]
        else:
            interval = meta.int("full_attention_interval", 4, hi=n + 1)
            linear = [(i + 1) % interval != 0 for i in range(n)]
        n_v = meta.int("ssm.time_step_rank", required=True)
        inner = meta.int("ssm.inner_size", required=True)
        if inner % n_v:
            raise InputError(meta.path, f"{meta.key('ssm.inner_size')} {inner} is not a multiple of "
                                        f"{meta.key('ssm.time_step_rank')} {n_v}")
        dk = meta.int("ssm.state_size", required=True)
        dn = deltanet_spec(meta.int("ssm.group_count", required=True), n_v, dk, inner // n_v,
                           meta.int("ssm.conv_kernel", required=True, hi=64), d.norm_eps)
        rope_dim = d.rope_dim or d.head_dim[0] // 4
        moe = meta.arch == "qwen35moe"
        if moe:
            n_exp = meta.int("expert_count", required=True)
            router = RouterSpec(top_k=meta.int("expert_used_count", required=True, hi=n_exp), norm_topk=True)
            ffn = MoESpec(n_experts=n_exp, d_ff_expert=meta.int("expert_feed_forward_length", required=True),
                          router=router, shared_d_ff=meta.int("expert_shared_feed_forward_length", 0, lo=0),
                          shared_gate="blk.0.ffn_gate_inp_shexp.weight" in meta.tensors
                          or any(t.endswith("ffn_gate_inp_shexp.weight") for t in meta.tensors))
            ffns: list[DenseFFNSpec | MoESpec] = [ffn] * n
        else:
            if not meta.has("feed_forward_length"):
                raise InputError(meta.path, f"GGUF metadata lacks {meta.key('feed_forward_length')!r}")
            ffns = [DenseFFNSpec(d_ff=d.d_ff[i]) for i in range(n)]
        return self.build(d, meta.arch, linear, dn, rope_dim, ffns)

    # -- HF --------------------------------------------------------------------------------------
    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        moe = cfg.model_type in ("qwen3_5_moe", "qwen3_5_moe_text")
        d = read_hf(cfg, ff_key=None if moe else "intermediate_size", tied_default=False)
        n = d.n_layers
        types = cfg.layer_types(n)
        if types is None:
            interval = cfg.int("full_attention_interval", 4, hi=n + 1)
            types = ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n)]
        bad = sorted({t for t in types if t not in ("linear_attention", "full_attention")})
        if bad:
            raise InputError(cfg.path, f"layer_types holds {bad}; Qwen3.5 has linear_attention and full_attention")
        rp = cfg.rope()
        prf = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25))
        if not isinstance(prf, (int, float)) or not 0 < prf <= 1:
            raise InputError(cfg.path, f"partial_rotary_factor is {prf!r}, not in (0, 1]")
        dn = deltanet_spec(cfg.int("linear_num_key_heads"), cfg.int("linear_num_value_heads"),
                           cfg.int("linear_key_head_dim"), cfg.int("linear_value_head_dim"),
                           cfg.int("linear_conv_kernel_dim", 4, hi=64), d.norm_eps)
        if moe:
            n_exp = cfg.int("num_experts")
            router = RouterSpec(top_k=cfg.int("num_experts_per_tok", hi=n_exp), norm_topk=True)
            shared = cfg.int("shared_expert_intermediate_size", 0, lo=0)
            ffns: list[DenseFFNSpec | MoESpec] = [
                MoESpec(n_experts=n_exp, d_ff_expert=cfg.int("moe_intermediate_size"), router=router,
                        shared_d_ff=shared, shared_gate=shared > 0)] * n
        else:
            ffns = [DenseFFNSpec(d_ff=d.d_ff[i]) for i in range(n)]
        return self.build(d, "qwen35moe" if moe else "qwen35", [t == "linear_attention" for t in types], dn,
                          int(d.head_dim[0] * prf), ffns)

    def build(self, d: Dims, arch: str, linear: list[bool], dn: GatedDeltaNetSpec, rope_dim: int,
              ffns: list[DenseFFNSpec | MoESpec]) -> ModelSpec:
        def mixer(i: int) -> AttentionSpec | GatedDeltaNetSpec:
            if linear[i]:
                return dn
            return AttentionSpec(
                n_heads=d.n_heads[i], n_kv_heads=d.n_kv_heads[i], head_dim=d.head_dim[i],
                rope=Rope(base=d.rope_base, style="neox", dim=rope_dim, scaling=d.rope_scaling),
                scale=default_scale(d.head_dim[i]), qk_norm=True, output_gate=True,
            )

        layers = tuple(LayerSpec(index=i, mixer=mixer(i), ffn=ffns[i]) for i in range(d.n_layers))
        return ModelSpec(family=self.name, arch=arch, vocab_size=d.vocab_size, d_model=d.d_model, layers=layers,
                         norm_eps=d.norm_eps, tied_embeddings=d.tied_embeddings, hf_norm_offset=1.0,
                         context_length=d.context_length)

    # -- llama.cpp's storage conventions, undone on the GGUF side ----------------------------------
    def gguf_transform(self, param: str, spec: ModelSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
        parts = param.split(".")
        if parts[0] != "layers" or len(parts) < 4 or parts[2] != "attn":
            return None
        m = spec.layers[int(parts[1])].mixer
        if not isinstance(m, GatedDeltaNetSpec):
            return None
        leaf = ".".join(parts[3:])
        hk, hv, dv, kd = m.n_k_heads, m.n_v_heads, m.head_v_dim, m.key_dim
        rep = hv // hk
        tiled = _TILED_V_HEADS.get(spec.arch, False) and rep > 1

        def heads(dim: int, hd: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda t: untile_v_heads(t, dim, hk, rep, hd) if tiled else t

        if leaf == "A_log":  # ssm_a = -exp(A_log)
            return lambda t: heads(0, 1)(torch.log(-t))
        if leaf in ("dt_bias", "in_proj_b.weight", "in_proj_a.weight"):
            return heads(0, 1)
        if leaf == "in_proj_z.weight":
            return heads(0, dv)
        if leaf == "out_proj.weight":
            return heads(1, dv)
        if leaf == "in_proj_qkv.weight":
            return lambda t: torch.cat([t[: 2 * kd], heads(0, dv)(t[2 * kd:])]) if tiled else t
        if leaf == "conv1d.weight":  # (C, K) → (C, 1, K), v channels untiled
            return lambda t: (torch.cat([t[: 2 * kd], heads(0, dv)(t[2 * kd:])]) if tiled else t).unsqueeze(1)
        return None


__all__ = ["Qwen35", "tile_v_heads", "untile_v_heads"]
