"""FP8 KV cache: keys and values pass through E4M3 with per-tensor scales before attention.

Convention (vLLM, compressed-tensors ``kv_cache_scheme``): ``k_fp8 = sat(k / k_scale)``,
attention reads ``k_fp8 * k_scale``; same for v. Scales are per layer and per tensor. They
come from the checkpoint (``k_scale``/``v_scale``), from calibration (amax/448 of the first
forward pass, then frozen — what engines do when a checkpoint has none), or are 1.0.
Applied after rope, where the cache is written, in prefill and decode alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .kernels.fp8 import FP8_MAX, cast_to_fp8

ScaleSource = Literal["checkpoint", "calibrate", "unit"]


def fp8_roundtrip(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """x → E4M3 (saturating, round-to-nearest-even) → FP32, with x ≈ q · scale."""
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    return cast_to_fp8(x.float() / s).float() * s


@dataclass
class KVCacheOptions:
    """``calibration`` (with ``scales="calibrate"``): the first pass the scales come from (``kv_calibration.py``)."""

    dtype: Literal["auto", "fp8_e4m3", "none"] = "auto"
    scales: ScaleSource = "checkpoint"
    calibration: str = "prompt"
    calibration_seed: int = 0


@dataclass
class FP8KVQuant:
    """Callable (layer, k, v) → (k, v) through FP8; holds the per-layer scales it used."""

    source: ScaleSource = "calibrate"
    k_scale: dict[int, float] = field(default_factory=dict)
    v_scale: dict[int, float] = field(default_factory=dict)

    def __call__(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.k_scale:
            if self.source == "unit":
                self.k_scale[layer], self.v_scale[layer] = 1.0, 1.0
            elif self.source == "calibrate":
                self.k_scale[layer] = max(float(k.detach().abs().amax()) / FP8_MAX, 1e-12)
                self.v_scale[layer] = max(float(v.detach().abs().amax()) / FP8_MAX, 1e-12)
            else:
                raise KeyError(f"no checkpoint k_scale/v_scale for layer {layer}")
        return fp8_roundtrip(k, self.k_scale[layer]), fp8_roundtrip(v, self.v_scale[layer])
