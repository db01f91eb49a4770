"""One decoder layer, composed from its ``LayerSpec``: norms around a mixer and an FFN.

    x ─ attn_norm ─ mixer ─ [post_attn_norm] ─(+x)─▶ attn_residual
      ─ mlp_norm ─ ffn ─ [post_mlp_norm] ─(+)─▶ out
    (Gemma 4: ─(+)─▶ mlp_residual ─ [ple block] ─(+)─▶ ple_residual ─ [× layer_scalar] ─▶ out)

Capture points, in this order: ``attn_norm``, the mixer's, ``attn.post_norm`` (sandwich
norms only), ``attn_residual``, ``mlp_norm``, the FFN's, ``mlp.post_norm``, then, only for
layers with a per-layer input block or an output scalar (Gemma 4), ``mlp_residual``, the
block's ``ple.*`` and ``ple_residual``; last ``out`` (after the scalar).
An FFN module with ``takes_residual`` (Gemma 4's ``ParallelMoE``) gets the residual stream
as well as the normed input. ``layer_scalar`` is a scale parameter (``scale_params``): a
checkpoint without it loads as 1.0 and is reported.
``forward`` takes the residual stream as input, so a layer can run on another runner's input
(activation patching); what else it reads (earlier layers' keys/values, per-layer inputs)
comes in the ``KVCache`` (``graph/context.py`` builds one from captures).
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import LayerSpec, ModelSpec
from .attention import Attention, KVCache
from .deltanet import GatedDeltaNet
from .ffn import build_ffn
from .ops import Recorder, RMSNorm
from .parallel_moe import ParallelMoE
from .per_layer import PerLayerBlock


def build_mixer(layer: LayerSpec, d_model: int, prefix: str, rec: Recorder, eps: float) -> nn.Module:
    m = layer.mixer
    if m.kind == "attention":
        return Attention(m, d_model, layer.index, f"{prefix}attn", rec, eps)
    if m.kind == "gated_deltanet":
        return GatedDeltaNet(m, d_model, layer.index, f"{prefix}attn", rec, eps)
    raise ValueError(f"layer {layer.index}: unknown mixer kind {m.kind!r}")


def build_layer_ffn(layer: LayerSpec, d_model: int, prefix: str, rec: Recorder, eps: float) -> nn.Module:
    f = layer.ffn
    if f.kind == "dense+moe":
        return ParallelMoE(f, d_model, prefix, rec, eps)
    return build_ffn(f, d_model, prefix, rec)


def residual_norms(layer: LayerSpec) -> list[str]:
    """Names (relative to the layer) of the RMSNorms whose output is added to the residual stream."""
    out = ["post_attn_norm"] if layer.norms.attn_post else []
    out += ["post_mlp_norm"] if layer.norms.ffn_post else []
    return out + (["ple.post_norm"] if layer.per_layer_input else [])


class Layer(nn.Module):
    scale_params = ("layer_scalar",)

    def __init__(self, spec: ModelSpec, index: int, rec: Recorder):
        super().__init__()
        ls = spec.layers[index]
        d, eps = spec.d_model, spec.norm_eps
        self.spec, self.index, self.rec = ls, index, rec
        self.prefix = p = f"layers.{index}."
        self.attn_norm = RMSNorm(d, eps)
        self.attn = build_mixer(ls, d, p, rec, eps)
        if ls.norms.attn_post:
            self.post_attn_norm = RMSNorm(d, eps)
        self.mlp_norm = RMSNorm(d, eps)
        self.mlp = build_layer_ffn(ls, d, f"{p}mlp", rec, eps)
        if ls.norms.ffn_post:
            self.post_mlp_norm = RMSNorm(d, eps)
        if ls.per_layer_input:
            self.ple = PerLayerBlock(d, ls.per_layer_input, getattr(ls.ffn, "activation", "gelu_tanh"), f"{p}ple",
                                     rec, eps)
        if ls.out_scale:
            self.layer_scalar = nn.Parameter(torch.ones(1), requires_grad=False)

    def points(self) -> list[str]:
        p, n = self.prefix, self.spec.norms
        names = [f"{p}attn_norm", *self.attn.points()]
        if n.attn_post:
            names.append(f"{p}attn.post_norm")
        names += [f"{p}attn_residual", f"{p}mlp_norm", *self.mlp.points()]
        if n.ffn_post:
            names.append(f"{p}mlp.post_norm")
        if self.spec.per_layer_input or self.spec.out_scale:
            names.append(f"{p}mlp_residual")
        if self.spec.per_layer_input:
            names += [*self.ple.points(), f"{p}ple_residual"]
        return names + [f"{p}out"]

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        p, rec, n = self.prefix, self.rec, self.spec.norms
        a = self.attn_norm(x)
        rec(f"{p}attn_norm", a)
        o = self.attn(a, pos, cache)
        if n.attn_post:
            o = self.post_attn_norm(o)
            rec(f"{p}attn.post_norm", o)
        x = x + o
        rec(f"{p}attn_residual", x)
        m = self.mlp_norm(x)
        rec(f"{p}mlp_norm", m)
        f = self.mlp(m, x) if getattr(self.mlp, "takes_residual", False) else self.mlp(m)
        if n.ffn_post:
            f = self.post_mlp_norm(f)
            rec(f"{p}mlp.post_norm", f)
        x = x + f
        ls = self.spec
        if ls.per_layer_input or ls.out_scale:
            rec(f"{p}mlp_residual", x)
        if ls.per_layer_input:
            ple = cache.per_layer_inputs if cache is not None else None
            if ple is None:
                raise RuntimeError(f"layer {self.index} needs the per-layer inputs of this pass "
                                   "(KVCache.per_layer_inputs)")
            x = x + self.ple(x, ple[:, self.index])
            rec(f"{p}ple_residual", x)
        if ls.out_scale:
            x = x * self.layer_scalar.float()
        rec(f"{p}out", x)
        return x


__all__ = ["Layer", "build_layer_ffn", "build_mixer", "residual_norms"]
