"""What-if ``--norm-act-quant unscaled``: residual-writing norm outputs quantized to FP8 without their scale.

What it emulates (seed 000, Gemma 4 31B FP8_BLOCK in vLLM: "activation scales already
absorbed into the weights ... dynamic per-token activation quantization still applied ...
double-scales activations, hidden state norms blow up, logits saturate at the softcap")::

    y = RMSNorm(x) · w                    the norm's output, (T, d)
    s = amax_t(|y|) / 448                 dynamic per-token FP8 scale (what the engine computes)
    q = fp8_e4m3(y / s)                   quantized, saturating, as the engine's fused norm+quant kernel
    out = q                               ... but s is never multiplied back: the engine treats it as
                                          already absorbed into the weights that follow

so each token's output leaves 448/amax_t larger than it should (~50-150× for a unit-RMS
activation), with FP8 rounding on top.

Where it applies: the RMSNorms whose output is added to the residual stream (post-attention,
post-feedforward, post-per-layer-input norms: ``graph.layer.residual_norms``) and the final
norm that feeds the head. That placement is the point of the what-if: in Gemma's sandwich
architecture every linear feeds an RMSNorm (q/k/v norms, the post norms), so a per-token
factor on any linear's input or output is undone one op later and changes nothing but the
rounding; the seed's "double-scaled activations" can only blow the residual up and pin the
logits at the softcap where the scaled activation reaches the residual stream or the head
without another norm in between. A reproduction that applied the factor inside the linears
would show no blow-up at all, which is itself a finding about the seed's explanation.
The checkpoint is untouched: the weight audit stays clean and the diagnosis has to come from
the activations (norm blow-up, softcap saturation, per-op best-fit scale at ``attn.post_norm``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..graph.ops import RMSNorm
from ..kernels import fp8 as kfp8

MODES = ("off", "unscaled")


class UnscaledFP8Norm(RMSNorm):
    """RMSNorm whose output is per-token FP8-quantized and handed on without its scale (see the module notes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        s = y.abs().amax(-1, keepdim=True).clamp_min(1e-12) / kfp8.FP8_MAX  # (T, 1)
        return kfp8.cast_to_fp8(y / s).float()  # s is dropped: "absorbed"


def final_norm_module(options: Any, dim: int, eps: float) -> RMSNorm:
    """The candidate's final norm as ``options.norm_act_quant`` wants it (the streamer builds it alone)."""
    return UnscaledFP8Norm(dim, eps) if options.norm_act_quant == "unscaled" else RMSNorm(dim, eps)


__all__ = ["MODES", "UnscaledFP8Norm", "final_norm_module"]
