"""The one decoder graph both runners share.

Behaviour comes from ``ModelConfig``/``ArchSpec`` (architectures as data); the reference and
candidate runners differ only in the weights loaded and the linear modules swapped in
(``nn.Linear`` in FP32 for the reference, quantized modules for the candidate). Batch size is
1: a debugging run is one sequence, so every activation is (T, F) and capture rows are token
positions.

Each op records its output under the canonical capture name (docs/CAPTURE_NAMES.md) into the
``Captures`` store attached to the model, if any. ``Layer.forward`` takes the residual stream
as input, so a layer can be run on another runner's input (activation patching).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .capture import Captures
from .config import ModelConfig, RopeScaling

KVQuant = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(layer, k, v) → (k, v) as they are written to the KV cache (e.g. through FP8)."""


class Recorder:
    """Shared capture sink; one instance per model so modules need no back-reference."""

    def __init__(self) -> None:
        self.captures: Captures | None = None

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if self.captures is not None:
            self.captures.record(name, x)


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, in FP32; ``w`` is the effective multiplier (Gemma's 1+w already folded)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)) * self.weight.float()


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


def rope_inv_freq(head_dim: int, base: float, scaling: RopeScaling, freq_factors: torch.Tensor | None) -> torch.Tensor:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if freq_factors is not None:  # GGUF llama3-style rope_freqs tensor: divides the frequencies
        inv = inv / freq_factors.double()
    elif scaling.kind == "llama3":
        lo_wl = scaling.original_context / scaling.low_freq_factor
        hi_wl = scaling.original_context / scaling.high_freq_factor
        wl = 2 * math.pi / inv
        smooth = (scaling.original_context / wl - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        scaled = torch.where(wl > lo_wl, inv / scaling.factor, inv)
        mid = (wl <= lo_wl) & (wl >= hi_wl)
        inv = torch.where(mid, (1 - smooth) * inv / scaling.factor + smooth * inv, scaled)
    if scaling.kind == "linear":
        inv = inv / scaling.factor
    return inv.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """x (T, H, D); cos/sin (T, D/2)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    if style == "neox":
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


@dataclass
class KVCache:
    """Per-layer keys/values as written (after any KV quantization): (S, n_kv, D)."""

    k: list[torch.Tensor | None] = field(default_factory=list)
    v: list[torch.Tensor | None] = field(default_factory=list)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.k) <= layer:
            self.k.append(None)
            self.v.append(None)
        pk, pv = self.k[layer], self.v[layer]
        self.k[layer] = k if pk is None else torch.cat([pk, k])
        self.v[layer] = v if pv is None else torch.cat([pv, v])
        return self.k[layer], self.v[layer]  # type: ignore[return-value]

    @property
    def length(self) -> int:
        return 0 if not self.k or self.k[0] is None else self.k[0].shape[0]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rec: Recorder):
        super().__init__()
        self.cfg, self.layer, self.rec = cfg, layer, rec
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        bias = cfg.spec.qkv_bias
        self.q_proj = nn.Linear(d, h * hd, bias=bias)
        self.k_proj = nn.Linear(d, kv * hd, bias=bias)
        self.v_proj = nn.Linear(d, kv * hd, bias=bias)
        self.o_proj = nn.Linear(h * hd, d, bias=False)
        if cfg.spec.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd, cfg.norm_eps)
        self.sliding = cfg.is_sliding(layer)
        self.rope_base = cfg.rope_base_for(layer)
        self.rope_scaling = cfg.rope_scaling_for(layer)
        self.rope_freqs: torch.Tensor | None = None  # set by loaders that carry a rope_freqs tensor
        self.kv_quant: KVQuant | None = None

    def _p(self, name: str) -> str:
        return f"layers.{self.layer}.attn.{name}"

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        cfg, T = self.cfg, x.shape[0]
        h, kvh, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q = self.q_proj(x).view(T, h, hd)  # (T, H, D)
        k = self.k_proj(x).view(T, kvh, hd)  # (T, KV, D)
        v = self.v_proj(x).view(T, kvh, hd)
        if cfg.spec.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        inv = rope_inv_freq(hd, self.rope_base, self.rope_scaling, self.rope_freqs).to(x.device)
        ang = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, D/2)
        cos, sin = ang.cos(), ang.sin()
        q = apply_rope(q, cos, sin, cfg.spec.rope_style)
        k = apply_rope(k, cos, sin, cfg.spec.rope_style)
        if self.kv_quant is not None:
            k, v = self.kv_quant(self.layer, k, v)
        self.rec(self._p("q"), q.reshape(T, -1))
        self.rec(self._p("k"), k.reshape(T, -1))
        self.rec(self._p("v"), v.reshape(T, -1))
        if cache is not None:
            k_all, v_all = cache.append(self.layer, k, v)
        else:
            k_all, v_all = k, v
        S = k_all.shape[0]
        rep = h // kvh
        kk = k_all.repeat_interleave(rep, dim=1).transpose(0, 1)  # (H, S, D)
        vv = v_all.repeat_interleave(rep, dim=1).transpose(0, 1)
        scores = torch.matmul(q.transpose(0, 1), kk.transpose(1, 2)) * cfg.scale  # (H, T, S)
        key_pos = torch.arange(S, device=x.device)
        allowed = key_pos[None, :] <= pos[:, None]  # (T, S)
        if self.sliding and cfg.sliding_window:
            allowed &= (pos[:, None] - key_pos[None, :]) < cfg.sliding_window
        if cfg.attn_softcap is not None:
            if pos[0] == 0:  # the (T, H·S) layout is only fixed over a whole-sequence pass
                self.rec(self._p("scores"), (scores * allowed).transpose(0, 1).reshape(T, -1))
            scores = softcap(scores, cfg.attn_softcap)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1)
        out = torch.matmul(probs, vv).transpose(0, 1).reshape(T, h * hd)  # (T, H·D)
        self.rec(self._p("out"), out)
        o = self.o_proj(out)
        self.rec(self._p("o_proj"), o)
        return o


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rec: Recorder):
        super().__init__()
        self.layer, self.rec = layer, rec
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.act = F.silu if cfg.spec.activation == "silu" else (lambda t: F.gelu(t, approximate="tanh"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = f"layers.{self.layer}.mlp."
        g = self.gate_proj(x)
        self.rec(p + "gate", g)
        u = self.up_proj(x)
        self.rec(p + "up", u)
        d = self.down_proj(self.act(g) * u)
        self.rec(p + "down", d)
        return d


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rec: Recorder):
        super().__init__()
        self.cfg, self.layer, self.rec = cfg, layer, rec
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer, rec)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg, layer, rec)
        if cfg.spec.sandwich_norms:
            self.post_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.post_mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        p = f"layers.{self.layer}."
        a = self.attn_norm(x)
        self.rec(p + "attn_norm", a)
        o = self.attn(a, pos, cache)
        if self.cfg.spec.sandwich_norms:
            o = self.post_attn_norm(o)
            self.rec(p + "attn.post_norm", o)
        x = x + o
        self.rec(p + "attn_residual", x)
        m = self.mlp_norm(x)
        self.rec(p + "mlp_norm", m)
        d = self.mlp(m)
        if self.cfg.spec.sandwich_norms:
            d = self.post_mlp_norm(d)
            self.rec(p + "mlp.post_norm", d)
        x = x + d
        self.rec(p + "out", x)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.rec = Recorder()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg, i, self.rec) for i in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.final_norm.weight.device

    def set_kv_quant(self, fn: KVQuant | None) -> None:
        for layer in self.layers:
            layer.attn.kv_quant = fn

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).float()
        if self.cfg.spec.embed_scale:
            x = x * torch.tensor(math.sqrt(self.cfg.d_model), dtype=torch.float32)
        self.rec("embed", x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_norm(x)
        self.rec("final_norm", x)
        logits = self.lm_head(x)
        self.rec("logits.pre_softcap", logits)
        logits = softcap(logits, self.cfg.final_softcap)
        self.rec("logits", logits)
        return logits

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (T,) → logits (T, V) for positions start_pos..start_pos+T-1."""
        tokens = tokens.to(self.device)
        pos = torch.arange(start_pos, start_pos + tokens.shape[0], device=self.device)
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, pos, cache)
        return self.head(x)
