"""Softmax attention of one layer, built from an ``AttentionSpec``; and the KV cache.

Order of operations (transformers' eager attention and llama.cpp's ``build_attn`` agree):
project q, k, v → (QK-norm per head) → (value norm) → rope on q and k → KV-cache write
(through the optional KV quantizer, e.g. FP8) → scores q·kᵀ·scale → (attention softcap) →
causal and sliding-window mask → softmax in FP32 → ·V → (output gate) → o_proj.

Capture points (docs/CAPTURE_NAMES.md), in this order: ``attn.q``, ``attn.k``, ``attn.v``
(after norms and rope, as they enter the cache), ``attn.scores`` (pre-softcap logits, only
with a softcap and only over a whole-sequence pass), ``attn.out`` (softmax·V, heads
flattened, before o_proj), ``attn.o_proj``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..spec import AttentionSpec
from .deltanet import RecurrentState
from .ops import Recorder, RMSNorm, apply_rope, rope_inv_freq, softcap

KVQuant = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(layer, k, v) → (k, v) as they are written to the KV cache (e.g. through FP8)."""


@dataclass
class KVCache:
    """Per-layer keys/values as written (after any KV quantization), (S, n_kv, D) each; ``length`` positions seen.

    Every layer call receives it, so it also carries what a layer reads from outside its own
    input besides earlier layers' keys/values: ``per_layer_inputs``, the (T, L, P) per-layer
    input embeddings of the current pass (Gemma 4 PLE, ``graph/per_layer.py``).
    ``state``: recurrent layers' state beside the KV cache (``graph.deltanet.RecurrentState``
    per layer index): absent means zeros, a fresh sequence; a caller may plant one (e.g. the
    garbage state of an engine's uninitialized memory, ``kv_calibration``).
    """

    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    length: int = 0
    per_layer_inputs: torch.Tensor | None = None
    state: dict[int, RecurrentState] = field(default_factory=dict)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pk, pv = self.k.get(layer), self.v.get(layer)
        self.k[layer] = k if pk is None else torch.cat([pk, k])
        self.v[layer] = v if pv is None else torch.cat([pv, v])
        return self.k[layer], self.v[layer]


class Attention(nn.Module):
    """Attention of layer ``layer``; records under ``{prefix}.q`` … ``{prefix}.o_proj``."""

    def __init__(self, spec: AttentionSpec, d_model: int, layer: int, prefix: str, rec: Recorder, eps: float):
        super().__init__()
        self.spec, self.layer, self.prefix, self.rec = spec, layer, prefix, rec
        h, kv, hd = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(d_model, h * hd * (2 if spec.output_gate else 1), bias=spec.qkv_bias)
        if spec.kv_source is None:
            self.k_proj = nn.Linear(d_model, kv * hd, bias=spec.qkv_bias)
            if not spec.k_eq_v:
                self.v_proj = nn.Linear(d_model, kv * hd, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(h * hd, d_model, bias=False)
        if spec.qk_norm:
            self.q_norm = RMSNorm(hd, eps)
            if spec.kv_source is None:
                self.k_norm = RMSNorm(hd, eps)
        if spec.v_norm and spec.kv_source is None:
            self.v_norm = RMSNorm(hd, eps, with_weight=False)
        self.kv_quant: KVQuant | None = None
        self.rope_freqs: torch.Tensor | None = None  # set by loaders that carry a rope_freqs tensor

    def points(self) -> list[str]:
        s, p = self.spec, self.prefix
        names = [f"{p}.q"] + ([] if s.kv_source is not None else [f"{p}.k", f"{p}.v"])
        if s.softcap is not None:
            names.append(f"{p}.scores")
        return names + [f"{p}.out", f"{p}.o_proj"]

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        rope = self.spec.rope
        if rope is None:
            return x
        inv = rope_inv_freq(rope, self.rope_freqs).to(x.device)
        ang = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, R/2)
        return apply_rope(x, ang.cos(), ang.sin(), rope.style)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        s, p, T = self.spec, self.prefix, x.shape[0]
        h, kvh, hd = s.n_heads, s.n_kv_heads, s.head_dim
        q = self.q_proj(x)
        gate = None
        if s.output_gate:  # per head [q_h | gate_h] (transformers Qwen3NextAttention)
            q, gate = q.view(T, h, 2 * hd).chunk(2, dim=-1)
            gate = gate.reshape(T, h * hd)
        q = q.reshape(T, h, hd)  # (T, H, D)
        if s.qk_norm:
            q = self.q_norm(q)
        q = self._rope(q, pos)
        self.rec(f"{p}.q", q.reshape(T, -1))
        if s.kv_source is None:
            k = self.k_proj(x).view(T, kvh, hd)  # (T, KV, D)
            v = k if s.k_eq_v else self.v_proj(x).view(T, kvh, hd)
            if s.qk_norm:
                k = self.k_norm(k)
            if s.v_norm:
                v = self.v_norm(v)
            k = self._rope(k, pos)
            if self.kv_quant is not None:
                k, v = self.kv_quant(self.layer, k, v)
            self.rec(f"{p}.k", k.reshape(T, -1))
            self.rec(f"{p}.v", v.reshape(T, -1))
            k_all, v_all = cache.append(self.layer, k, v) if cache is not None else (k, v)
        else:
            if cache is None or s.kv_source not in cache.k:
                raise RuntimeError(f"layer {self.layer} reads the KV cache of layer {s.kv_source}, which is empty")
            k_all, v_all = cache.k[s.kv_source], cache.v[s.kv_source]
        S, rep = k_all.shape[0], h // kvh
        kk = k_all.repeat_interleave(rep, dim=1).transpose(0, 1)  # (H, S, D)
        vv = v_all.repeat_interleave(rep, dim=1).transpose(0, 1)
        scores = torch.matmul(q.transpose(0, 1), kk.transpose(1, 2)) * s.scale  # (H, T, S)
        key_pos = torch.arange(S, device=x.device)
        allowed = key_pos[None, :] <= pos[:, None]  # (T, S)
        if s.window:
            allowed &= (pos[:, None] - key_pos[None, :]) < s.window
        if s.softcap is not None:
            if pos[0] == 0:  # the (T, H·S) layout is only fixed over a whole-sequence pass
                self.rec(f"{p}.scores", (scores * allowed).transpose(0, 1).reshape(T, -1))
            scores = softcap(scores, s.softcap)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1)
        out = torch.matmul(probs, vv).transpose(0, 1).reshape(T, h * hd)  # (T, H·D)
        if gate is not None:
            out = out * torch.sigmoid(gate)
        self.rec(f"{p}.out", out)
        o = self.o_proj(out)
        self.rec(f"{p}.o_proj", o)
        return o


__all__ = ["Attention", "KVCache", "KVQuant"]
