"""Feed-forward blocks built from the spec: the gated MLP and the mixture of experts.

MLP capture points: ``mlp.gate``, ``mlp.up`` (projection outputs), ``mlp.act`` (act(gate)·up,
the input of down_proj), ``mlp.down`` (the block's output).

MoE (transformers ``Qwen3MoeSparseMoeBlock``/``DeepseekV3MoE``, llama.cpp ``build_moe_ffn``):
router logits → scores (softmax or sigmoid) → top-k choice (optionally on scores + bias,
optionally group-limited) → weights (renormalized, × routed scale) → each chosen expert, an
ordinary gated MLP with its own ``gate_proj``/``up_proj``/``down_proj`` linears, runs on the
tokens routed to it, its output weighted and summed (experts in index order, as transformers
does) → plus the shared expert (optionally sigmoid-gated). Experts are separate linears so a
candidate swaps each for its own quantized module and localization names it by index.
MoE capture points: ``mlp.router`` (logits, (T, E)), ``mlp.route`` (chosen expert ids as
floats, (T, k), best first), ``mlp.route_weights`` ((T, k)), ``mlp.experts`` (weighted sum of
the routed experts, (T, d)), ``mlp.shared`` (shared expert output after its gate, (T, d)),
``mlp.out`` (the block's output).
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import DenseFFNSpec, MoESpec, RouterSpec
from .ops import Recorder, activation


class MLP(nn.Module):
    """down(act(gate(x)) · up(x)); records under ``{prefix}.gate|up|act|down`` when ``rec`` is given."""

    def __init__(self, d_model: int, d_ff: int, act: str, prefix: str = "", rec: Recorder | None = None):
        super().__init__()
        self.prefix, self.rec = prefix, rec
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)
        self.act = activation(act)  # type: ignore[arg-type]

    def points(self) -> list[str]:
        return [f"{self.prefix}.{n}" for n in ("gate", "up", "act", "down")] if self.rec is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rec, p = self.rec, self.prefix
        g = self.gate_proj(x)
        u = self.up_proj(x)
        a = self.act(g) * u
        d = self.down_proj(a)
        if rec is not None:
            rec(f"{p}.gate", g)
            rec(f"{p}.up", u)
            rec(f"{p}.act", a)
            rec(f"{p}.down", d)
        return d


def route(logits: torch.Tensor, spec: RouterSpec,
          bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (T, E) → (expert ids (T, k) int64 best first, weights (T, k) FP32). Pure."""
    lf = logits.float()
    scores = torch.softmax(lf, dim=-1) if spec.scoring == "softmax" else torch.sigmoid(lf)
    choice = scores + bias.float() if (spec.score_bias and bias is not None) else scores
    if spec.n_group > 1:
        T, E = choice.shape
        groups = choice.view(T, spec.n_group, E // spec.n_group)
        group_score = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)  # (T, n_group), DeepSeek-V3
        keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(spec.topk_group, dim=-1).indices, 1.0)
        choice = choice.masked_fill(~keep.bool().repeat_interleave(E // spec.n_group, dim=1), 0.0)
    ids = torch.topk(choice, spec.top_k, dim=-1).indices
    w = scores.gather(-1, ids)
    if spec.norm_topk:
        w = w / w.sum(-1, keepdim=True)
    return ids, w * spec.routed_scale


class MoE(nn.Module):
    """Router + experts (+ shared expert); see the module notes. Records under ``{prefix}.*``."""

    def __init__(self, spec: MoESpec, d_model: int, prefix: str, rec: Recorder):
        super().__init__()
        self.spec, self.prefix, self.rec = spec, prefix, rec
        self.router = nn.Linear(d_model, spec.n_experts, bias=False)
        if spec.router.score_bias:
            self.register_buffer("score_bias", torch.zeros(spec.n_experts))
        self.experts = nn.ModuleList(MLP(d_model, spec.d_ff_expert, spec.activation) for _ in range(spec.n_experts))
        if spec.shared_d_ff:
            self.shared_expert = MLP(d_model, spec.shared_d_ff, spec.activation)
            if spec.shared_gate:
                self.shared_expert_gate = nn.Linear(d_model, 1, bias=False)

    def points(self) -> list[str]:
        shared = ["shared"] if self.spec.shared_d_ff else []
        names = ["router", "route", "route_weights", "experts", *shared, "out"]
        return [f"{self.prefix}.{n}" for n in names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, rec = self.prefix, self.rec
        logits = self.router(x)  # (T, E)
        rec(f"{p}.router", logits)
        ids, w = route(logits, self.spec.router, getattr(self, "score_bias", None))  # (T, k) each
        rec(f"{p}.route", ids.float())
        rec(f"{p}.route_weights", w)
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
        for e in torch.unique(ids).tolist():  # ascending expert index, as transformers sums
            tok, slot = torch.where(ids == e)
            y = self.experts[e](x[tok]).float() * w[tok, slot, None]
            out.index_add_(0, tok, y)
        rec(f"{p}.experts", out)
        if self.spec.shared_d_ff:
            s = self.shared_expert(x).float()
            if self.spec.shared_gate:
                s = torch.sigmoid(self.shared_expert_gate(x).float()) * s
            rec(f"{p}.shared", s)
            out = out + s
        rec(f"{p}.out", out)
        return out


def build_ffn(spec: DenseFFNSpec | MoESpec, d_model: int, prefix: str, rec: Recorder) -> nn.Module:
    if spec.kind == "dense":
        return MLP(d_model, spec.d_ff, spec.activation, prefix, rec)
    if spec.kind == "moe":
        return MoE(spec, d_model, prefix, rec)
    raise ValueError(f"unknown FFN kind {spec.kind!r}")


__all__ = ["MLP", "MoE", "build_ffn", "route"]
