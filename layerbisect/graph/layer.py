"""One decoder layer, composed from its ``LayerSpec``: norms around a mixer and an FFN.

    x ─ attn_norm ─ mixer ─ [post_attn_norm] ─(+x)─▶ attn_residual
      ─ mlp_norm ─ ffn ─ [post_mlp_norm] ─(+)─▶ out

Capture points, in this order: ``attn_norm``, the mixer's, ``attn.post_norm`` (sandwich
norms only), ``attn_residual``, ``mlp_norm``, the FFN's, ``mlp.post_norm``, ``out``.
``forward`` takes the residual stream as input, so a layer can run on another runner's input
(activation patching).
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import LayerSpec, ModelSpec
from .attention import Attention, KVCache
from .deltanet import GatedDeltaNet
from .ffn import build_ffn
from .ops import Recorder, RMSNorm


def build_mixer(layer: LayerSpec, d_model: int, prefix: str, rec: Recorder, eps: float) -> nn.Module:
    m = layer.mixer
    if m.kind == "attention":
        return Attention(m, d_model, layer.index, f"{prefix}attn", rec, eps)
    if m.kind == "gated_deltanet":
        return GatedDeltaNet(m, d_model, layer.index, f"{prefix}attn", rec, eps)
    raise ValueError(f"layer {layer.index}: unknown mixer kind {m.kind!r}")


class Layer(nn.Module):
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
        self.mlp = build_ffn(ls.ffn, d, f"{p}mlp", rec)
        if ls.norms.ffn_post:
            self.post_mlp_norm = RMSNorm(d, eps)

    def points(self) -> list[str]:
        p, n = self.prefix, self.spec.norms
        names = [f"{p}attn_norm", *self.attn.points()]
        if n.attn_post:
            names.append(f"{p}attn.post_norm")
        names += [f"{p}attn_residual", f"{p}mlp_norm", *self.mlp.points()]
        if n.ffn_post:
            names.append(f"{p}mlp.post_norm")
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
        f = self.mlp(m)
        if n.ffn_post:
            f = self.post_mlp_norm(f)
            rec(f"{p}mlp.post_norm", f)
        x = x + f
        rec(f"{p}out", x)
        return x


__all__ = ["Layer", "build_mixer"]
