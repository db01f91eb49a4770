"""FP8 E4M3 quantization, dequantization and GEMM: plain-PyTorch reference first, native paths behind ``impl=``.

Format
    ``torch.float8_e4m3fn``: 1 sign, 4 exponent (bias 7), 3 mantissa bits; finite max ±448, no infinities,
    a single NaN pattern per sign. Casting a float to it rounds to nearest, ties to even (what Hopper's
    ``cvt.rn.satfinite.e4m3x2.f32`` does). We **saturate first**: values are clamped to ±448 before the cast,
    exactly as compressed-tensors ``round_to_quantized_type_args`` does (``torch.clamp(x, q_min, q_max)``
    then ``.to(float8_e4m3fn)``). A non-saturating cast of |x| > 448 is NaN.

Scale convention (compressed-tensors / vLLM / ModelOpt FP8; all three agree)
    The scale is a **multiplier** in dequantization and a divisor in quantization::

        q = fp8(clamp(x / s, -448, 448))        x ≈ float(q) * s

    A dynamic scale is ``amax / 448`` (compressed-tensors ``calculate_qparams``: ``max_val_pos / (bit_range / 2)``
    with bit_range = 896); a zero scale is replaced by the float32 eps like the producer does (the value never
    matters: every element of that block is 0).

Layout: one description for every granularity
    A scale tensor covers the 2-D matrix ``x (R, C)`` in blocks of ``(bh, bw)``; its shape is
    ``(ceil(R / bh), ceil(C / bw))`` and the last block in each direction may be partial (640 = 5·128 is whole,
    704 = 5·128 + 64 is not). The granularities the checkpoints use are special cases::

        per-tensor         block (R, C)      scale (1, 1)   [stored as (1,) or ()]
        per-row            block (1, C)      scale (R, 1)   per-token activations / per-channel weights
        per-1x128 group    block (1, 128)    scale (R, ceil(C/128))    FP8_BLOCK activations
        128x128 block      block (128, 128)  scale (ceil(R/128), ceil(C/128))   FP8_BLOCK weights

    ``expand_scale`` repeats a scale tensor to the full matrix, cropping partial blocks.

GEMM
    ``fp8_gemm(a_q, a_scale, a_block, b_q, b_scale, b_block)`` computes ``dequant(a) @ dequant(b).T`` with
    ``a (M, K)`` activations and ``b (N, K)`` weights (the nn.Linear layout).

    * ``impl="emulate"``: dequantize both to FP32 (exact: an e4m3 value times a bf16/fp32 scale), matmul in
      FP32. Runs anywhere; this is the reference for every native path.
    * ``impl="scaled_mm"``: ``torch._scaled_mm`` / ``torch.nn.functional.scaled_mm`` on CUDA (Hopper+):
      tensorwise, rowwise, and blockwise (1x128 activations x 128x128 weights) where this torch+cuBLAS accept
      it (``scaled_mm_supports(kind)`` probes once and caches).
    * ``impl="triton"``: our block-scaled Triton kernel (``triton_fp8.py``), for any block layout whose K
      block is 128 (or per-tensor / per-row, expressed as blocks).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch

from layerbisect.kernels.blocks import Block, resolve_block, scale_shape

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max

FP8Impl = Literal["emulate", "scaled_mm", "triton"]


# ---------------------------------------------------------------------------------------------------------------
# reference: plain PyTorch
# ---------------------------------------------------------------------------------------------------------------


def cast_to_fp8(x: torch.Tensor) -> torch.Tensor:
    """Saturating round-to-nearest-even cast to e4m3fn: clamp to ±448, then cast. NaN stays NaN."""
    return torch.clamp(x, -FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def expand_scale(scale: torch.Tensor, shape: tuple[int, int], block: Block) -> torch.Tensor:
    """Repeat a block scale tensor to the full (R, C) matrix, cropping partial last blocks."""
    r, c = shape
    bh, bw = block
    sr, sc = scale_shape(shape, block)
    s = scale.reshape(sr, sc)
    if sr == 1 and sc == 1:
        return s.expand(r, c)
    return s.repeat_interleave(bh, dim=0)[:r].repeat_interleave(bw, dim=1)[:, :c]


def _block_amax(x: torch.Tensor, block: Block) -> torch.Tensor:
    """amax over each (bh, bw) block, shape (ceil(R/bh), ceil(C/bw)). Padding with zeros does not change amax."""
    r, c = x.shape
    bh, bw = block
    sr, sc = scale_shape((r, c), block)
    pad_r, pad_c = sr * bh - r, sc * bw - c
    a = x.abs()
    if pad_r or pad_c:
        a = torch.nn.functional.pad(a, (0, pad_c, 0, pad_r))
    return a.reshape(sr, bh, sc, bw).amax(dim=(1, 3))


def dynamic_fp8_scale(x: torch.Tensor, block: Block) -> torch.Tensor:
    """Producer's dynamic scale: amax / 448 in x's dtype, zeros replaced by eps (the value is never used)."""
    s = _block_amax(x, block) / FP8_MAX
    eps = torch.finfo(s.dtype).eps
    return torch.where(s == 0, torch.full_like(s, eps), s)


def quantize_fp8(
    x: torch.Tensor,
    block: tuple[int | None, int | None],
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D ``x (R, C)`` with one scale per ``block``; dynamic (amax/448) when ``scale`` is None.

    Returns ``(q float8_e4m3fn (R, C), scale (ceil(R/bh), ceil(C/bw)))``. The division runs in the promoted
    dtype of x and scale (float32 for float32 activations, as in the producer's fake-quant forward).
    """
    if x.ndim != 2:
        raise ValueError(f"quantize_fp8 expects a 2-D tensor, got shape {tuple(x.shape)}")
    blk = resolve_block(tuple(x.shape), block)
    if scale is None:
        scale = dynamic_fp8_scale(x, blk)
    else:
        scale = scale.reshape(scale_shape(tuple(x.shape), blk))
    q = cast_to_fp8(x / expand_scale(scale, tuple(x.shape), blk))
    return q, scale


_LUT: dict[torch.dtype, torch.Tensor] = {}


def fp8_to_float32(q: torch.Tensor) -> torch.Tensor:
    """``q.to(torch.float32)``, bit for bit; on the CPU through a 256-entry table of torch's own conversion.

    Torch converts FP8 to FP32 on the CPU one element at a time (~0.2 G/s); a table lookup with int32 indices
    (``index_select``) is ~4× faster, and the table holds exactly what the conversion gives (NaN payloads too).
    """
    if q.device.type != "cpu" or q.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        return q.to(torch.float32)
    lut = _LUT.get(q.dtype)
    if lut is None:
        lut = _LUT[q.dtype] = torch.arange(256, dtype=torch.uint8).view(q.dtype).to(torch.float32)
    out = torch.empty(q.shape, dtype=torch.float32)
    flat_q, flat_o = q.contiguous().view(torch.uint8).reshape(-1), out.view(-1)
    step = 1 << 22  # int32 indices a block at a time: 16 MB
    for a in range(0, flat_q.numel(), step):
        torch.index_select(lut, 0, flat_q[a : a + step].int(), out=flat_o[a : a + step])
    return out


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, block: tuple[int | None, int | None]) -> torch.Tensor:
    """``float32(q) * scale`` (multiplier convention), FP32 result; exact for bf16/fp32/fp16 scales."""
    blk = resolve_block(tuple(q.shape), block)
    return fp8_to_float32(q) * expand_scale(scale.to(torch.float32), tuple(q.shape), blk)


def fp8_gemm_emulated(
    a_q: torch.Tensor, a_scale: torch.Tensor, a_block: tuple[int | None, int | None],
    b_q: torch.Tensor, b_scale: torch.Tensor, b_block: tuple[int | None, int | None],
) -> torch.Tensor:
    """Reference: ``dequant(a) @ dequant(b).T`` in FP32. a (M, K), b (N, K) -> (M, N)."""
    return dequantize_fp8(a_q, a_scale, a_block) @ dequantize_fp8(b_q, b_scale, b_block).T


# ---------------------------------------------------------------------------------------------------------------
# native: torch scaled_mm (CUDA, sm89+/sm90)
# ---------------------------------------------------------------------------------------------------------------

ScaledMMKind = Literal["tensorwise", "rowwise", "blockwise"]


def classify_blocks(
    a_shape: tuple[int, int], a_block: tuple[int | None, int | None],
    b_shape: tuple[int, int], b_block: tuple[int | None, int | None],
) -> ScaledMMKind | None:
    """Which scaled_mm recipe matches these layouts (None: no scaled_mm recipe; use emulate or triton)."""
    ab = resolve_block(a_shape, a_block)
    bb = resolve_block(b_shape, b_block)
    (m, k), (n, _) = a_shape, b_shape
    if ab == (m, k) and bb == (n, k):
        return "tensorwise"
    if ab[1] == k and bb[1] == k and ab[0] in (1, m) and bb[0] in (1, n):
        return "rowwise"  # a tensor scale is broadcast to rows
    if ab == (1, 128) and bb == (128, 128):
        return "blockwise"
    return None


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


def _scaled_mm_native(
    kind: ScaledMMKind,
    a_q: torch.Tensor, a_scale: torch.Tensor, b_q: torch.Tensor, b_scale: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    m, k = a_q.shape
    n = b_q.shape[0]
    b_t = b_q.t()  # (K, N) column-major, as cuBLAS wants
    if kind == "tensorwise":
        return torch._scaled_mm(
            a_q, b_t, scale_a=a_scale.reshape(()).float(), scale_b=b_scale.reshape(()).float(), out_dtype=out_dtype
        )
    if kind == "rowwise":
        sa = a_scale.float().reshape(-1, 1).expand(m, 1).contiguous()  # (M, 1)
        sb = b_scale.float().reshape(1, -1).expand(1, n).contiguous()  # (1, N)
        return torch._scaled_mm(a_q, b_t, scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    # blockwise: A 1x128 scales as an outer-dim-major (M, K/128) tensor; B 128x128 scales (N/128, L4) transposed,
    # L4 = K/128 rounded up to 4 (cuBLAS layout, see torch's common_methods_invocations scaled_mm samples).
    from torch.nn.functional import ScalingType, SwizzleType, scaled_mm

    kb = math.ceil(k / 128)
    sa = a_scale.float().reshape(m, kb).t().contiguous().t()  # (M, K/128), stride (1, M)
    l4 = math.ceil(kb / 4) * 4
    sb = _pad_to(b_scale.float().reshape(math.ceil(n / 128), kb), math.ceil(n / 128), l4).contiguous().t()
    return scaled_mm(
        a_q, b_t, sa, ScalingType.BlockWise1x128, sb, ScalingType.BlockWise128x128,
        swizzle_a=SwizzleType.NO_SWIZZLE, swizzle_b=SwizzleType.NO_SWIZZLE, output_dtype=out_dtype,
    )


@functools.cache
def scaled_mm_supports(kind: ScaledMMKind, out_dtype: torch.dtype = torch.float32) -> bool:
    """Probe once whether this torch + GPU accept a scaled_mm recipe with this output dtype."""
    if not torch.cuda.is_available():
        return False
    try:
        m = n = k = 256
        a = torch.ones(m, k, device="cuda").to(FP8_DTYPE)
        b = torch.ones(n, k, device="cuda").to(FP8_DTYPE)
        shapes = {"tensorwise": ((1,), (1,)), "rowwise": ((m, 1), (n, 1)), "blockwise": ((m, 2), (2, 2))}[kind]
        sa, sb = (torch.ones(s, device="cuda") for s in shapes)
        out = _scaled_mm_native(kind, a, sa, b, sb, out_dtype)
        torch.cuda.synchronize()
        return bool(torch.allclose(out.float(), torch.full_like(out.float(), float(k))))
    except Exception:  # noqa: BLE001 - any failure means "not supported here"
        return False


def fp8_gemm(
    a_q: torch.Tensor, a_scale: torch.Tensor, a_block: tuple[int | None, int | None],
    b_q: torch.Tensor, b_scale: torch.Tensor, b_block: tuple[int | None, int | None],
    impl: FP8Impl = "emulate",
) -> torch.Tensor:
    """``dequant(a) @ dequant(b).T`` -> (M, N) float32. See the module note for the impls."""
    if impl == "emulate":
        return fp8_gemm_emulated(a_q, a_scale, a_block, b_q, b_scale, b_block)
    if impl == "scaled_mm":
        kind = classify_blocks(tuple(a_q.shape), a_block, tuple(b_q.shape), b_block)
        if kind is None:
            raise ValueError(f"no scaled_mm recipe for blocks a={a_block} b={b_block}")
        for out_dtype in (torch.float32, torch.bfloat16):
            if scaled_mm_supports(kind, out_dtype):
                return _scaled_mm_native(kind, a_q, a_scale, b_q, b_scale, out_dtype).float()
        raise RuntimeError(f"torch scaled_mm does not support {kind} scaling on this device/torch build")
    if impl == "triton":
        from layerbisect.kernels import triton_fp8

        return triton_fp8.fp8_block_gemm(a_q, a_scale, a_block, b_q, b_scale, b_block)
    raise ValueError(f"unknown impl {impl!r}")
