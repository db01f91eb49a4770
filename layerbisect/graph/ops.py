"""Plain tensor helpers of the graph: RMSNorm, softcap, rope, activations, and the capture recorder.

All arithmetic is FP32. Shapes are noted where they change; batch size is 1, so activations
are ``(T, F)`` with T token positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import Captures
from ..spec import Activation, Rope, RopeScaling


class Recorder:
    """Shared capture sink; one instance per model so modules need no back-reference."""

    def __init__(self) -> None:
        self.captures: Captures | None = None

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if self.captures is not None:
            self.captures.record(name, x)


class RMSNorm(nn.Module):
    """y = x / rms(x) * w over the last dim, in FP32; ``w`` is the effective multiplier (see ``spec``).

    ``with_weight=False`` is the weightless norm (Gemma 4's value norm): no parameter at all.
    """

    def __init__(self, dim: int, eps: float, *, with_weight: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False) if with_weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y if self.weight is None else y * self.weight.float()


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap · tanh(x / cap) (Gemma 2 attention and final logits); identity when cap is None."""
    return x if cap is None else cap * torch.tanh(x / cap)


def activation(kind: Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "silu":
        return F.silu
    if kind == "gelu_tanh":
        return _gelu_tanh
    raise ValueError(f"unknown activation {kind!r}")


def _gelu_tanh(t: torch.Tensor) -> torch.Tensor:
    return F.gelu(t, approximate="tanh")


def rope_inv_freq(rope: Rope, freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse frequencies (rope.dim / 2,) in FP32: ``base ** (-2j / dim)``, scaled as the spec says.

    ``freq_factors`` (llama.cpp's ``rope_freqs`` tensor) divides the frequencies; without it,
    llama3 scaling is computed as transformers does (``_compute_llama3_parameters``).
    """
    dim = rope.dim
    inv = 1.0 / (rope.base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    s: RopeScaling = rope.scaling
    if freq_factors is not None:
        inv = inv / freq_factors.double().reshape(-1)[: inv.shape[0]].to(inv.device)
    elif s.kind == "llama3":
        lo_wl = s.original_context / s.low_freq_factor
        hi_wl = s.original_context / s.high_freq_factor
        wl = 2 * math.pi / inv
        smooth = (s.original_context / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        scaled = torch.where(wl > lo_wl, inv / s.factor, inv)
        mid = (wl <= lo_wl) & (wl >= hi_wl)
        inv = torch.where(mid, (1 - smooth) * inv / s.factor + smooth * inv, scaled)
    if s.kind == "linear":
        inv = inv / s.factor
    if rope.active_pairs is not None and freq_factors is None:
        inv[rope.active_pairs :] = 0.0
    return inv.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """Rotate the first 2·cos.shape[-1] features of each head. x (T, H, D); cos/sin (T, R/2) with R ≤ D."""
    rot = 2 * cos.shape[-1]
    xr, rest = (x, None) if rot == x.shape[-1] else (x[..., :rot], x[..., rot:])
    c, s = cos[:, None, :], sin[:, None, :]
    if style == "neox":
        half = rot // 2
        x1, x2 = xr[..., :half], xr[..., half:]
        out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    return out if rest is None else torch.cat([out, rest], dim=-1)


__all__ = ["RMSNorm", "Recorder", "activation", "apply_rope", "rope_inv_freq", "softcap"]
