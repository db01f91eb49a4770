"""Gated DeltaNet linear attention (Qwen3.5's ``linear_attention`` layers), built from a ``GatedDeltaNetSpec``.

Sources: transformers ``models/qwen3_5/modeling_qwen3_5.py`` (``Qwen3_5GatedDeltaNet``,
``torch_recurrent_gated_delta_rule``, ``Qwen3_5RMSNormGated``, ``l2norm``) and llama.cpp
``src/models/qwen35.cpp`` (``build_layer_attn_linear``) with ``delta-net-base.cpp``
(``build_delta_net_autoregressive``).

Order of operations, per token t (x: the attention-norm output, (T, d_model)):

    qkv = in_proj_qkv(x)                     (T, 2·Hk·Dk + Hv·Dv)   rows [q | k | v]
    c   = silu(causal depthwise conv1d(qkv))  K taps over [conv state (K-1 rows) ; qkv]
    q, k = l2norm per head (eps 1e-6), q · Dk^-0.5; v as is; value head j reads q/k head j // (Hv/Hk)
    β   = sigmoid(in_proj_b(x))              (T, Hv)
    g   = -exp(A_log) · softplus(in_proj_a(x) + dt_bias)      (T, Hv), log of the state decay
    S   ← exp(g_t)·S ;  S ← S + k_t ⊗ β_t (v_t − Sᵀk_t) ;  o_t = Sᵀ q_t      S: (Hv, Dk, Dv), FP32
    y   = rmsnorm(o per head) · w · silu(in_proj_z(x))        (gain w, *not* 1 + w)
    out = out_proj(y)

The delta rule runs as an exact token-by-token FP32 recurrence (transformers' chunked prefill
is the same sum reassociated; no chunked form here). The state a layer starts from is the one
in ``KVCache.state[layer]`` (conv window + S), zeros when absent; with a cache the final state
is written back, so decoding one token at a time continues the prompt's state. Without a cache
(activation patching, linear-input probes) every call starts from zeros, as a fresh sequence.

Canonical layout = transformers' (value heads grouped by key head; ``A_log``; conv weight
(C, 1, K)), so a quantized candidate's packed weights load without any permutation; llama.cpp's
converter reorders the value heads for ggml's tiled broadcast and stores ``-exp(A_log)``, which
the family adapter undoes on the FP32 GGUF side (``families/qwen35.py``).

Capture points (docs/CAPTURE_NAMES.md), in this order: ``attn.qkv`` (in_proj_qkv output),
``attn.conv`` (conv1d + SiLU), ``attn.q``/``attn.k`` (after the L2 norm, before the Dk^-0.5
scale, Hk heads), ``attn.v``, ``attn.beta``, ``attn.gate`` (g), ``attn.recurrence`` (o, before
the gated norm), ``attn.state`` (Frobenius norm of each value head's state S after token t,
(T, Hv): a state that starts as garbage or blows up shows here), ``attn.z``, ``attn.out``
(gated-norm output: the input of out_proj), ``attn.out_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import GatedDeltaNetSpec
from .ops import Recorder


@dataclass
class RecurrentState:
    """One Gated DeltaNet layer's state between calls.

    ``conv``: (K-1, conv_dim) FP32, the last K-1 rows of ``in_proj_qkv`` output (oldest first),
    which the causal conv reads before the new rows; ``ssm``: (Hv, Dk, Dv) FP32, the delta-rule state.
    """

    conv: torch.Tensor
    ssm: torch.Tensor

    @classmethod
    def zeros(cls, spec: GatedDeltaNetSpec, device: torch.device | str | None = None) -> RecurrentState:
        return cls(torch.zeros(spec.conv_kernel - 1, spec.conv_dim, device=device),
                   torch.zeros(spec.n_v_heads, spec.head_k_dim, spec.head_v_dim, device=device))

    def norms(self) -> dict[str, float]:
        """Frobenius norms of the conv window and of S, and the largest |S| entry (NaN/Inf kept)."""
        s = self.ssm.float()
        return {"conv_norm": float(self.conv.float().norm()), "ssm_norm": float(s.norm()),
                "ssm_amax": float(s.abs().max()) if s.numel() else 0.0}


class DepthwiseConv1d(nn.Module):
    """Causal depthwise conv over time: y[t, c] = Σ_j w[c, 0, j] · x[t + j - (K-1), c]; weight (C, 1, K) as HF."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel), requires_grad=False)

    def forward(self, x: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, C), window (K-1, C) → (y (T, C), new window (K-1, C))."""
        K = self.weight.shape[-1]
        full = torch.cat([window.to(x), x])  # (K-1+T, C)
        taps = full.unfold(0, K, 1)  # (T, C, K)
        y = (taps * self.weight[:, 0, :].float()).sum(-1)
        return y, full[full.shape[0] - (K - 1):]


class GatedRMSNorm(nn.Module):
    """RMS norm over the last dim with a plain gain, times silu(gate): ``Qwen3_5RMSNormGated``.

    Its own class (not ``ops.RMSNorm``) because HF stores this gain as is: the loaders add
    ``ModelSpec.hf_norm_offset`` (Qwen3.5's 1 + w) to ``RMSNorm`` modules only.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight.float() * F.silu(gate.float())


def l2norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x · rsqrt(Σx² + eps) over the last dim (transformers ``l2norm``, as flash-linear-attention)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact token-by-token gated delta rule in FP32.

    q, k (T, H, Dk) (q already scaled), v (T, H, Dv), g and beta (T, H), state (H, Dk, Dv).
    Returns (o (T, H, Dv), final state (H, Dk, Dv), per-token state norms (T, H)). Pure.
    """
    S = state.float().clone()
    T = q.shape[0]
    out = torch.empty(T, v.shape[1], v.shape[2], dtype=torch.float32, device=v.device)
    norms = torch.empty(T, v.shape[1], dtype=torch.float32, device=v.device)
    decay = g.float().exp()
    qf, kf, vf, bf = q.float(), k.float(), v.float(), beta.float()
    for t in range(T):
        S = S * decay[t][:, None, None]
        kv_mem = (S * kf[t][:, :, None]).sum(1)  # (H, Dv): what the state predicts for k_t (as transformers sums)
        delta = (vf[t] - kv_mem) * bf[t][:, None]
        S = S + kf[t][:, :, None] * delta[:, None, :]
        out[t] = (S * qf[t][:, :, None]).sum(1)
        norms[t] = S.flatten(1).norm(dim=-1)
    return out, S, norms


class GatedDeltaNet(nn.Module):
    """The recurrent mixer of layer ``layer``; records under ``{prefix}.qkv`` … ``{prefix}.out_proj``."""

    def __init__(self, spec: GatedDeltaNetSpec, d_model: int, layer: int, prefix: str, rec: Recorder, eps: float):
        super().__init__()
        self.spec, self.layer, self.prefix, self.rec = spec, layer, prefix, rec
        self.in_proj_qkv = nn.Linear(d_model, spec.conv_dim, bias=False)
        self.conv1d = DepthwiseConv1d(spec.conv_dim, spec.conv_kernel)
        self.in_proj_b = nn.Linear(d_model, spec.n_v_heads, bias=False)
        self.in_proj_a = nn.Linear(d_model, spec.n_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.zeros(spec.n_v_heads), requires_grad=False)
        self.dt_bias = nn.Parameter(torch.zeros(spec.n_v_heads), requires_grad=False)
        self.in_proj_z = nn.Linear(d_model, spec.value_dim, bias=False)
        self.norm = GatedRMSNorm(spec.head_v_dim, spec.norm_eps)
        self.out_proj = nn.Linear(spec.value_dim, d_model, bias=False)

    def points(self) -> list[str]:
        names = ("qkv", "conv", "q", "k", "v", "beta", "gate", "recurrence", "state", "z", "out", "out_proj")
        return [f"{self.prefix}.{n}" for n in names]

    def shards(self) -> dict[str, tuple[tuple[str, int, int], ...]]:
        """Row ranges of the fused projections: ``in_proj_qkv`` holds q, k and v (label, first row, end row)."""
        kd, vd = self.spec.key_dim, self.spec.value_dim
        return {"in_proj_qkv": (("q", 0, kd), ("k", kd, 2 * kd), ("v", 2 * kd, 2 * kd + vd))}

    def initial_state(self, device: torch.device) -> RecurrentState:
        return RecurrentState.zeros(self.spec, device)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache=None) -> torch.Tensor:
        s, p, rec, T = self.spec, self.prefix, self.rec, x.shape[0]
        hk, hv, dk, dv = s.n_k_heads, s.n_v_heads, s.head_k_dim, s.head_v_dim
        state = cache.state.get(self.layer) if cache is not None else None
        if state is None:
            state = self.initial_state(x.device)
        qkv = self.in_proj_qkv(x).float()  # (T, conv_dim)
        rec(f"{p}.qkv", qkv)
        conv, window = self.conv1d(qkv, state.conv)
        conv = F.silu(conv)
        rec(f"{p}.conv", conv)
        q, k, v = torch.split(conv, [s.key_dim, s.key_dim, s.value_dim], dim=-1)
        q = l2norm(q.reshape(T, hk, dk), s.l2_eps)  # (T, Hk, Dk)
        k = l2norm(k.reshape(T, hk, dk), s.l2_eps)
        v = v.reshape(T, hv, dv)  # (T, Hv, Dv)
        rec(f"{p}.q", q.reshape(T, -1))
        rec(f"{p}.k", k.reshape(T, -1))
        rec(f"{p}.v", v.reshape(T, -1))
        beta = torch.sigmoid(self.in_proj_b(x).float())  # (T, Hv)
        rec(f"{p}.beta", beta)
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias.float())  # (T, Hv)
        rec(f"{p}.gate", g)
        rep = hv // hk
        qh = q.repeat_interleave(rep, dim=1) * dk ** -0.5  # (T, Hv, Dk): value head j reads key head j // rep
        kh = k.repeat_interleave(rep, dim=1)
        o, S, norms = gated_delta_rule(qh, kh, v, g, beta, state.ssm)
        rec(f"{p}.recurrence", o.reshape(T, -1))
        rec(f"{p}.state", norms)
        if cache is not None:
            cache.state[self.layer] = RecurrentState(window, S)
        z = self.in_proj_z(x).float()
        rec(f"{p}.z", z)
        y = self.norm(o, z.reshape(T, hv, dv)).reshape(T, hv * dv)
        rec(f"{p}.out", y)
        out = self.out_proj(y)
        rec(f"{p}.out_proj", out)
        return out


__all__ = ["DepthwiseConv1d", "GatedDeltaNet", "GatedRMSNorm", "RecurrentState", "gated_delta_rule", "l2norm"]
