"""Per-layer input embeddings (Gemma 4 "PLE"): a second embedding that feeds every layer.

Model level (``PerLayerInputs``, canonical prefix ``per_layer``), computed once per pass from
the token ids and the scaled main embedding ``e`` (T, d)::

    tok  = embed(ids) · sqrt(P)                              (T, L·P)  token identity
    proj = norm((proj(e) · d^-0.5) viewed (T, L, P))         (T, L, P) context, RMSNorm over P
    ple  = (proj + tok viewed (T, L, P)) · 2^-0.5            (T, L, P)

Layer level (``PerLayerBlock``, prefix ``layers.{i}.ple``), after the FFN's residual add, with
``ple_i = ple[:, i]`` (T, P)::

    y = post_norm(proj(act(gate(x)) · ple_i))                (T, d), added to the residual

Sources: transformers ``Gemma4TextModel.get_per_layer_inputs``/``project_per_layer_inputs``
and the end of ``Gemma4TextDecoderLayer.forward``; llama.cpp ``src/models/gemma4.cpp``
(``build_inp_per_layer``, ``project_per_layer_inputs``). The scales sqrt(P), d^-0.5 and 2^-0.5
are computed in FP32 (llama.cpp's ``sqrtf``; transformers casts sqrt(P) to the weight dtype).

The per-layer inputs of a pass travel to the layers in ``KVCache.per_layer_inputs`` (the
object every layer call already receives), so activation patching can hand a layer the
reference's own slice (``graph/context.py``).

Capture points: ``per_layer.embed`` (tok, (T, L·P)), ``per_layer.proj`` (normed projection,
(T, L·P)), ``per_layer.inputs`` (ple, (T, L·P)); per layer ``ple.gate`` (gate output),
``ple.act`` (act(gate)·ple_i, the input of proj), ``ple.proj``, ``ple.post_norm``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..spec import Activation, ModelSpec
from .ops import Recorder, RMSNorm, activation


class PerLayerInputs(nn.Module):
    """The model-level half of PLE: token ids + scaled embeddings → (T, L, P)."""

    def __init__(self, spec: ModelSpec, rec: Recorder):
        super().__init__()
        L, P = spec.n_layers, spec.per_layer_input
        self.n_layers, self.width, self.rec = L, P, rec
        V = spec.per_layer_vocab or spec.vocab_size
        self.embed = nn.Embedding(V, L * P, _weight=torch.empty(V, L * P))  # no init: loaded later
        self.proj = nn.Linear(spec.d_model, L * P, bias=False)
        self.norm = RMSNorm(P, spec.norm_eps)

    def points(self) -> list[str]:
        return ["per_layer.embed", "per_layer.proj", "per_layer.inputs"]

    def forward(self, tokens: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        T, L, P = tokens.shape[0], self.n_layers, self.width
        tok = self.embed(tokens).float() * math.sqrt(P)  # (T, L·P)
        self.rec("per_layer.embed", tok)
        proj = self.proj(e).float() * (e.shape[-1] ** -0.5)
        proj = self.norm(proj.view(T, L, P))  # (T, L, P)
        self.rec("per_layer.proj", proj.reshape(T, L * P))
        ple = (proj + tok.view(T, L, P)) * (2.0 ** -0.5)
        self.rec("per_layer.inputs", ple.reshape(T, L * P))
        return ple


class PerLayerBlock(nn.Module):
    """The layer-level half of PLE; ``forward(x, ple_i)`` returns what is added to the residual."""

    def __init__(self, d_model: int, width: int, act: Activation, prefix: str, rec: Recorder, eps: float):
        super().__init__()
        self.prefix, self.rec = prefix, rec
        self.gate = nn.Linear(d_model, width, bias=False)
        self.proj = nn.Linear(width, d_model, bias=False)
        self.post_norm = RMSNorm(d_model, eps)
        self.act = activation(act)

    def points(self) -> list[str]:
        return [f"{self.prefix}.{n}" for n in ("gate", "act", "proj", "post_norm")]

    def forward(self, x: torch.Tensor, ple_i: torch.Tensor) -> torch.Tensor:
        p, rec = self.prefix, self.rec
        g = self.gate(x)
        rec(f"{p}.gate", g)
        a = self.act(g) * ple_i.to(g.device).float()
        rec(f"{p}.act", a)
        y = self.proj(a)
        rec(f"{p}.proj", y)
        y = self.post_norm(y)
        rec(f"{p}.post_norm", y)
        return y


__all__ = ["PerLayerBlock", "PerLayerInputs"]
