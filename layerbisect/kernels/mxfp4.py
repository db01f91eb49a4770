"""MXFP4 (OCP microscaling): E2M1 values in blocks of 32 along K with one E8M0 power-of-two scale per block.

Format
    Elements: E2M1, the same table, codes and nibble packing as NVFP4 (``nvfp4.py``: element 2j in the low
    nibble of byte j, 2j+1 in the high nibble; compressed-tensors ``MXFP4PackedCompressor`` subclasses its NVFP4
    compressor and packs with the same ``pack_fp4_to_uint8``). No global scale.
    Scales: E8M0, an unsigned biased exponent in a uint8 (compressed-tensors ``mx_utils.py``)::

        scale = 2 ** (e - 127)          e = weight_scale[r, k // 32]  (uint8, bias 127)

    compressed-tensors decodes it as ``2.0 ** (e - 127)`` in bfloat16 (``decompress_mx_scale``); every value of
    e in 0..254 is exact there and in FP32. (The OCP spec reserves e = 255 for NaN; the producer never writes
    it: its exponents come from ``floor(log2(amax))``.)

    weight_packed (out, in/2) uint8;  weight_scale (out, in/32) uint8;  nothing else (MXFP4A16: weights only;
    MXFP4: activations quantized dynamically the same way, per token and 32-block).

Scale convention — a multiplier, and an *offset* inside the exponent
    ``w ≈ e2m1 * 2 ** (e - 127)``. The producer picks e from the block's amax so that the block fits E2M1's
    range (compressed-tensors ``mxfp_utils.generate_mx_scales``, after vLLM's ``reference_mxfp4.py``)::

        p     = round_to_power_2(amax)            amax's exponent, rounded up when the mantissa is >= 1.75
        e     = 127 + floor(log2(p)) - 2          2 = floor(log2(6)), E2M1's largest exponent: the *element
                                                  offset*; the largest element then maps to 4..7, clamped to 6
        code  = e2m1(clamp(x / 2 ** (e - 127), -6, 6))

    Two offsets live in e: the E8M0 bias (127) and the element offset (2). A reader that subtracts one of them
    twice is off by a power of two: the element offset twice gives weights ×¼ (vLLM issue 35562), the bias
    twice gives 2**-127 (everything underflows). ``exponent_offset_error`` names the power.

GEMM
    ``impl="emulate"``: dequantize both operands to FP32 exactly (an E2M1 value times a power of two is exact),
    matmul in FP32: the reference. ``impl="native"``: the same dequantization on the operands' device and one
    FP32 matmul (Hopper has no FP4 MMA; a block-scaled Triton kernel would only change accumulation order).
"""

from __future__ import annotations

from typing import Literal

import torch

from layerbisect.kernels.nvfp4 import E2M1_MAX, codes_to_e2m1, e2m1_to_codes, round_to_e2m1, unpack_fp4

BLOCK = 32
E8M0_BIAS = 127
ELEMENT_OFFSET = 2  # floor(log2(6)): E2M1's largest exponent (compressed-tensors _MX_ELEM_OFFSET[4])
MXFP4Impl = Literal["emulate", "native"]

# ---------------------------------------------------------------------------------------------------------------
# reference: plain PyTorch
# ---------------------------------------------------------------------------------------------------------------


def e8m0_to_float(e: torch.Tensor) -> torch.Tensor:
    """uint8 biased exponents -> float32 powers of two ``2 ** (e - 127)`` (exact for e in 0..254)."""
    return torch.exp2(e.to(torch.float32) - E8M0_BIAS)


def round_to_power_2(x: torch.Tensor) -> torch.Tensor:
    """amax -> a power of two, rounding up when the mantissa is >= 1.75 (compressed-tensors ``round_to_power_2``).

    Bit arithmetic in x's own float format: add half of the lowest mantissa bit E2M1 keeps (1 << (m - 2)) and
    keep sign and exponent. Works for float32, bfloat16 and float16 inputs; returns x's dtype.
    """
    formats = {torch.float32: (torch.int32, 23, 8), torch.bfloat16: (torch.int16, 7, 8),
               torch.float16: (torch.int16, 10, 5)}
    if x.dtype not in formats:
        raise TypeError(f"round_to_power_2 needs float32/bfloat16/float16, got {x.dtype}")
    int_dtype, mant, expo = formats[x.dtype]
    bits = x.view(int_dtype).to(torch.int64) & ((1 << (1 + expo + mant)) - 1)  # as unsigned
    add = 1 << (mant - 1 - 1)  # E2M1 has one mantissa bit
    keep = ((1 << (expo + 1)) - 1) << mant
    out = (bits + add) & keep
    if int_dtype is torch.int16:
        out = torch.where(out >= 1 << 15, out - (1 << 16), out)
    return out.to(int_dtype).view(x.dtype)


def block_exponents(amax: torch.Tensor) -> torch.Tensor:
    """Per-block amax -> E8M0 exponents (uint8), the producer's way: 127 + floor(log2(p)) - 2, clamped to 0..255."""
    p = round_to_power_2(amax)
    e = E8M0_BIAS + torch.floor(torch.log2(p.float())) - ELEMENT_OFFSET
    return torch.round(torch.clamp(e, 0, 255)).to(torch.uint8)


def quantize_mxfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> (codes uint8 (..., K), exponents uint8 (..., K/32)); dynamic, one scale per 32-block."""
    if x.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the last dimension to be a multiple of {BLOCK}, got {x.shape[-1]}")
    blocks = x.unflatten(-1, (-1, BLOCK))
    e = block_exponents(blocks.abs().amax(dim=-1))
    scale = e8m0_to_float(e).to(x.dtype)  # the producer keeps the scale in the activation's dtype
    q = round_to_e2m1(torch.clamp(blocks / scale.unsqueeze(-1), -E2M1_MAX, E2M1_MAX))
    return e2m1_to_codes(q.flatten(-2)), e


def dequantize_mxfp4(codes: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """codes (..., K), E8M0 exponents (..., K/32) -> float32 (..., K): ``e2m1 * 2 ** (e - 127)``."""
    vals = codes_to_e2m1(codes).unflatten(-1, (-1, BLOCK))
    return (vals * e8m0_to_float(exponents).unsqueeze(-1)).flatten(-2)


def dequantize_mxfp4_packed(packed: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """weight_packed (N, K/2) uint8, weight_scale (N, K/32) uint8 -> float32 (N, K)."""
    return dequantize_mxfp4(unpack_fp4(packed), exponents)


def fake_quantize_mxfp4(x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize activations like the producer's dynamic MXFP4 forward (float32 result)."""
    codes, e = quantize_mxfp4(x)
    return dequantize_mxfp4(codes, e)


def exponent_offset_error(alpha: float, tol: float = 0.05) -> int | None:
    """The power k with α ≈ 2**k (k ≠ 0, |k| ≤ 8) when a best-fit α is a power of two within ``tol``; else None.

    k = -2 is the element offset subtracted twice (weights ×¼); see the module notes.
    """
    import math

    if not (alpha > 0 and math.isfinite(alpha)):
        return None
    k = round(math.log2(alpha))
    if k == 0 or abs(k) > 8 or abs(alpha / 2.0**k - 1) > tol:
        return None
    return k


def mxfp4_gemm(a: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None, b_packed: torch.Tensor,
               b_exponents: torch.Tensor, x: torch.Tensor | None = None, impl: MXFP4Impl = "emulate") -> torch.Tensor:
    """``act @ dequant(b).T``: ``a`` = (codes, exponents) of quantized activations, or None with FP32 ``x``.

    b_packed (N, K/2), b_exponents (N, K/32) -> (M, N) float32. Both impls dequantize exactly; "native" only
    runs on the operands' device.
    """
    if impl not in ("emulate", "native"):
        raise ValueError(f"unknown impl {impl!r}")
    act = dequantize_mxfp4(*a) if isinstance(a, tuple) else x
    if act is None:
        raise ValueError("mxfp4_gemm needs quantized activations or x")
    return act @ dequantize_mxfp4_packed(b_packed, b_exponents).to(act.device).T


__all__ = [
    "BLOCK",
    "E8M0_BIAS",
    "ELEMENT_OFFSET",
    "block_exponents",
    "dequantize_mxfp4",
    "dequantize_mxfp4_packed",
    "e8m0_to_float",
    "exponent_offset_error",
    "fake_quantize_mxfp4",
    "mxfp4_gemm",
    "quantize_mxfp4",
    "round_to_power_2",
]
