"""Gemma 4's MoE block: a dense gated MLP beside routed experts, each branch with its own norms.

Built from a ``ParallelMoESpec`` (``spec.py``). Unlike ``ffn.MoE`` the block reads the layer's
residual stream ``x`` as well as the pre-FFN norm's output ``m = pre_norm(x)``
(transformers ``Gemma4TextDecoderLayer.forward``, llama.cpp ``src/models/gemma4.cpp``)::

    dense   = post_norm_1(down(act(gate(m)) · up(m)))                         (T, d)
    logits  = router(rms(x) · router_scale · d^-0.5)                          (T, E)  weightless RMSNorm
    ids, w  = top-k of softmax(logits), renormalized; w ·= expert_scale[ids]  (T, k) each
    experts = post_norm_2(Σ_k w · expert_ids(pre_norm_2(x)))                  (T, d)
    out     = dense + experts                                                 (T, d)

The layer's own post-FFN norm and residual add follow (``graph/layer.py``). ``router_scale``
(d,) and ``expert_scale`` (E,) are scale parameters (``scale_params``): a checkpoint without
them loads as 1.0 and is reported, what a lenient engine loader does (seed 004).
Experts are separate gated MLPs (one linear each), so a candidate swaps each for its own
quantized module and localization names it by index; they are summed in index order, as
transformers does.

Capture points (prefix ``layers.{i}.mlp``), in this order: ``gate``, ``up``, ``act``, ``down``
(dense branch, as ``MLP``), ``post_norm_1``, ``router`` (logits), ``route`` (expert ids as
floats, best first; the routing comparison keys on this name), ``route_weights`` (after the
per-expert scale), ``pre_norm_2`` (the experts' input), ``experts`` (weighted sum),
``post_norm_2``, ``out`` (the sum of both branches).
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import ParallelMoESpec
from .ffn import MLP, route
from .ops import Recorder, RMSNorm, activation


class ParallelMoE(nn.Module):
    """Dense MLP + routed experts (Gemma 4); ``forward(m, x)`` takes the normed input and the residual."""

    takes_residual = True
    scale_params = ("router_scale", "expert_scale")

    def __init__(self, spec: ParallelMoESpec, d_model: int, prefix: str, rec: Recorder, eps: float):
        super().__init__()
        self.spec, self.prefix, self.rec, self.eps = spec, prefix, rec, eps
        self.gate_proj = nn.Linear(d_model, spec.d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, spec.d_ff, bias=False)
        self.down_proj = nn.Linear(spec.d_ff, d_model, bias=False)
        self.act = activation(spec.activation)
        self.post_norm_1 = RMSNorm(d_model, eps)
        self.router = nn.Linear(d_model, spec.n_experts, bias=False)
        self.router_scale = nn.Parameter(torch.ones(d_model), requires_grad=False)
        self.expert_scale = nn.Parameter(torch.ones(spec.n_experts), requires_grad=False)
        self.router_norm = RMSNorm(d_model, eps, with_weight=False)
        self.pre_norm_2 = RMSNorm(d_model, eps)
        self.experts = nn.ModuleList(MLP(d_model, spec.d_ff_expert, spec.activation) for _ in range(spec.n_experts))
        self.post_norm_2 = RMSNorm(d_model, eps)

    def points(self) -> list[str]:
        names = ["gate", "up", "act", "down", "post_norm_1", "router", "route", "route_weights", "pre_norm_2",
                 "experts", "post_norm_2", "out"]
        return [f"{self.prefix}.{n}" for n in names]

    def forward(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p, rec = self.prefix, self.rec
        g = self.gate_proj(m)
        u = self.up_proj(m)
        a = self.act(g) * u
        d = self.down_proj(a)
        rec(f"{p}.gate", g)
        rec(f"{p}.up", u)
        rec(f"{p}.act", a)
        rec(f"{p}.down", d)
        dense = self.post_norm_1(d)
        rec(f"{p}.post_norm_1", dense)

        r_in = self.router_norm(x) * self.router_scale.float() * (x.shape[-1] ** -0.5)
        logits = self.router(r_in)  # (T, E)
        rec(f"{p}.router", logits)
        ids, w = route(logits, self.spec.router)  # (T, k) each
        w = w * self.expert_scale.float()[ids]
        rec(f"{p}.route", ids.float())
        rec(f"{p}.route_weights", w)

        e_in = self.pre_norm_2(x)
        rec(f"{p}.pre_norm_2", e_in)
        acc = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
        for e in torch.unique(ids).tolist():  # ascending expert index, as transformers sums
            tok, slot = torch.where(ids == e)
            acc.index_add_(0, tok, self.experts[e](e_in[tok]).float() * w[tok, slot, None])
        rec(f"{p}.experts", acc)
        moe = self.post_norm_2(acc)
        rec(f"{p}.post_norm_2", moe)
        out = dense + moe
        rec(f"{p}.out", out)
        return out


__all__ = ["ParallelMoE"]
