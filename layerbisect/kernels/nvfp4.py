"""NVFP4: E2M1 values in blocks of 16 with an E4M3 block scale and an FP32 global scale.

Format
    E2M1 (4 bits: sign, 2 exponent, 1 mantissa), magnitudes ``[0, 0.5, 1, 1.5, 2, 3, 4, 6]`` indexed by the low 3
    bits, bit 3 is the sign. Rounding to E2M1 is round-to-nearest, ties to even (compressed-tensors
    ``quantization/utils/fp4_utils.py::cast_to_fp4``: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4, >5→6).

Packing (compressed-tensors ``compressors/nvfp4/helpers.py::pack_fp4_to_uint8`` / ``unpack_fp4_from_uint8``;
ModelOpt and vLLM's ``break_fp4_bytes`` use the same order)::

    byte j of a row  =  [ bit7..4: code of element 2j+1 | bit3..0: code of element 2j ]
                           high nibble = odd element       low nibble = even element

    weight_packed (out, in/2) uint8;  weight_scale (out, in/16) float8_e4m3fn;  one global scale (1,) float32

Scale convention — the trap
    compressed-tensors stores a global scale that is a **divisor**::

        w ≈ e2m1 * (float32(weight_scale_e4m3) / weight_global_scale)            weight_global_scale ≈ 448*6/amax

    (``forward_helpers.py::_dequantize``: ``scale = scale / global_scale; x_q.to(scale.dtype) * scale``; vLLM's
    ``nvfp4_emulation_utils.dequantize_to_dtype`` divides too). The division happens first, in FP32, then the
    product: we keep that order so our FP32 dequant is bit-identical to the producer's.
    ModelOpt stores the reciprocal, ``weight_scale_2 = amax/(448*6)``, a **multiplier**
    (vLLM ``modelopt.py``: "weight_scale_2 fp32 per-tensor global scale = amax / (6.0 * 448.0)"):
    ``w ≈ e2m1 * (float32(weight_scale) * weight_scale_2)``. ``GlobalScale`` carries the value and the convention.

Quantization (the producer's order, ``utils/helpers.py::calculate_qparams`` + ``forward_helpers._quantize``)::

    amax_b  = max |x| over the block of 16
    s_b     = e4m3(clamp(global_scale * (amax_b / 6), -448, 448)); s_b == 0 -> 0.125 (the producer's eps)
    code    = e2m1(clamp(x / (s_b / global_scale), -6, 6))

    Activation global scales are static (``input_global_scale`` from calibration = 448*6/amax_calib) or
    "observed" (448*6/amax of the current input, ``generate_gparam``). A static global scale that is too large
    for the input makes ``global_scale * amax_b / 6`` exceed 448: the producer saturates the block scale (the
    block clips to ±6·448/gs); a kernel that casts without saturating gets NaN. ``block_scale_overflow`` counts
    those blocks.

GEMM
    ``impl="emulate"``: dequantize activations and weights to FP32 exactly as above, matmul in FP32.
    ``impl="triton"``: ``triton_nvfp4.nvfp4_gemm`` (fused unpack + dequant + bf16 tensor-core GEMM; Hopper has
    no FP4 MMA). Activations are quantized by the same PyTorch code as the emulation, on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from layerbisect.kernels.fp8 import FP8_MAX, cast_to_fp8

E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float32)
E2M1_MAX = 6.0
BLOCK = 16
ZERO_SCALE_EPS = 0.125  # compressed-tensors _get_dtype_eps(float8_e4m3fn)

NVFP4Impl = Literal["emulate", "triton"]


@dataclass(frozen=True)
class GlobalScale:
    """A per-tensor FP32 scale and how it applies: ``divide`` (compressed-tensors) or ``multiply`` (ModelOpt)."""

    value: torch.Tensor  # float32 scalar tensor
    convention: Literal["divide", "multiply"] = "divide"

    def apply(self, block_scale_f32: torch.Tensor) -> torch.Tensor:
        """Effective per-block scale in FP32, computed the way the producer does."""
        g = self.value.to(torch.float32).reshape(1)
        if self.convention == "divide":
            return block_scale_f32 / g
        return block_scale_f32 * g

    def as_divisor(self) -> torch.Tensor:
        """The compressed-tensors-style value (448*6/amax); used as the quantization global scale."""
        g = self.value.to(torch.float32).reshape(1)
        return g if self.convention == "divide" else 1.0 / g

    def factor(self) -> float:
        """The scalar that multiplies e2m1 * e4m3 products (1/gs or ws2), for kernels that apply it last."""
        g = float(self.value.to(torch.float64).reshape(()))
        return 1.0 / g if self.convention == "divide" else g


# ---------------------------------------------------------------------------------------------------------------
# codes, packing
# ---------------------------------------------------------------------------------------------------------------


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest E2M1 value, ties to even (expects x already clamped to ±6). Keeps x's dtype."""
    a = x.abs()
    r = torch.zeros_like(a)
    r = torch.where(a > 0.25, torch.full_like(a, 0.5), r)
    r = torch.where(a >= 0.75, torch.full_like(a, 1.0), r)
    r = torch.where(a > 1.25, torch.full_like(a, 1.5), r)
    r = torch.where(a >= 1.75, torch.full_like(a, 2.0), r)
    r = torch.where(a > 2.5, torch.full_like(a, 3.0), r)
    r = torch.where(a >= 3.5, torch.full_like(a, 4.0), r)
    r = torch.where(a > 5.0, torch.full_like(a, 6.0), r)
    return torch.where(x < 0, -r, r)


def e2m1_to_codes(v: torch.Tensor) -> torch.Tensor:
    """E2M1 values (exactly representable) -> 4-bit codes (uint8 0..15); -0.0 keeps its sign bit."""
    idx = torch.searchsorted(E2M1_VALUES.to(v.device), v.abs().to(torch.float32).contiguous())
    sign = torch.signbit(v).to(torch.uint8) << 3
    return idx.to(torch.uint8) | sign


def codes_to_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes -> float32 values."""
    mag = E2M1_VALUES.to(codes.device)[(codes & 0x7).long()]
    return torch.where((codes & 0x8) != 0, -mag, mag)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """(..., K) codes -> (..., K/2) uint8; element 2j in the low nibble, 2j+1 in the high nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4 needs an even last dimension, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """(..., K/2) uint8 -> (..., K) codes (inverse of ``pack_fp4``)."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------------------------------
# quantize / dequantize (reference)
# ---------------------------------------------------------------------------------------------------------------


def global_scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """compressed-tensors ``generate_gparam``: 448*6/amax, amax clamped to tiny, NaN/inf -> 1. Shape (1,) fp32."""
    a = amax.to(torch.float32).abs().reshape(1)
    a = torch.clamp(a, min=torch.finfo(torch.float32).tiny)
    gs = FP8_MAX * E2M1_MAX / a
    return torch.nan_to_num(gs, nan=1.0, posinf=1.0, neginf=1.0)


def block_scales(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Producer's local scales for x (..., K): returns (e4m3 scales (..., K/16), overflow mask (..., K/16)).

    ``overflow`` marks blocks whose unsaturated scale ``gs * amax / 6`` exceeds 448 (a non-saturating engine
    would produce NaN there; the producer clamps).
    """
    if x.shape[-1] % BLOCK:
        raise ValueError(f"NVFP4 needs the last dimension to be a multiple of {BLOCK}, got {x.shape[-1]}")
    amax = x.unflatten(-1, (-1, BLOCK)).abs().amax(dim=-1)
    s = global_scale.to(torch.float32).reshape(1) * (amax / E2M1_MAX)  # order and promotion as the producer
    overflow = s > FP8_MAX
    s8 = cast_to_fp8(s)
    s8 = torch.where(s8.to(torch.float32) == 0, torch.tensor(ZERO_SCALE_EPS, dtype=torch.float32), s8.float())
    return s8.to(torch.float8_e4m3fn), overflow


def quantize_nvfp4(
    x: torch.Tensor, global_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize x (..., K) with a divisor-convention global scale (448*6/amax).

    Returns ``(codes uint8 (..., K), block_scale e4m3 (..., K/16), overflow bool (..., K/16))``.
    """
    s8, overflow = block_scales(x, global_scale)
    eff = s8.to(torch.float32) / global_scale.to(torch.float32).reshape(1)  # (..., K/16)
    scaled = x.unflatten(-1, (-1, BLOCK)) / eff.unsqueeze(-1)
    q = round_to_e2m1(torch.clamp(scaled, -E2M1_MAX, E2M1_MAX))
    return e2m1_to_codes(q.flatten(-2)), s8, overflow


def dequantize_nvfp4(codes: torch.Tensor, block_scale: torch.Tensor, global_scale: GlobalScale) -> torch.Tensor:
    """codes (..., K), e4m3 block scales (..., K/16) -> float32 (..., K): ``e2m1 * (float32(s) (/|*) g)``."""
    eff = global_scale.apply(block_scale.to(torch.float32))  # (..., K/16)
    vals = codes_to_e2m1(codes).unflatten(-1, (-1, BLOCK))
    return (vals * eff.unsqueeze(-1)).flatten(-2)


def dequantize_nvfp4_packed(
    packed: torch.Tensor, block_scale: torch.Tensor, global_scale: GlobalScale
) -> torch.Tensor:
    """weight_packed (N, K/2) uint8 -> float32 (N, K)."""
    return dequantize_nvfp4(unpack_fp4(packed), block_scale, global_scale)


def fake_quantize_nvfp4(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize-dequantize activations like the producer's forward; returns (x_dq float32, overflow mask)."""
    codes, s8, overflow = quantize_nvfp4(x, global_scale)
    return dequantize_nvfp4(codes, s8, GlobalScale(global_scale, "divide")), overflow


def nvfp4_gemm(
    a_codes: torch.Tensor, a_scale: torch.Tensor, a_global: GlobalScale,
    b_packed: torch.Tensor, b_scale: torch.Tensor, b_global: GlobalScale,
    impl: NVFP4Impl = "emulate",
) -> torch.Tensor:
    """``dequant(a) @ dequant(b).T``: a codes (M, K), b packed (N, K/2) -> (M, N) float32."""
    if impl == "emulate":
        return dequantize_nvfp4(a_codes, a_scale, a_global) @ dequantize_nvfp4_packed(b_packed, b_scale, b_global).T
    if impl == "triton":
        from layerbisect.kernels import triton_nvfp4

        return triton_nvfp4.nvfp4_gemm(
            pack_fp4(a_codes), a_scale, b_packed, b_scale, alpha=a_global.factor() * b_global.factor()
        )
    raise ValueError(f"unknown impl {impl!r}")
