"""GGUF block dequantization on the GPU in Triton, bit-exact with ``references.gguf_dequant``.

Design note
-----------
Format: a tensor is a run of blocks, ``type_size`` bytes → ``block_size`` FP32 elements
(layouts drawn in ``references/gguf_dequant.py``, one class per type; restated per kernel
branch below). Scales always **multiply**: ``x = d * q``, or ``x = (d * sc) * q - (dmin * m)``
for the k-quants with mins. No global scale exists in GGUF.

Kernel: one program writes ``BPP`` whole blocks, a (BPP, block_size) tile; every output
element computes its own byte address(es) and bit shift, loads its byte(s) (neighbours share
bytes, so the repeats hit L1) and its block's scale bytes, and writes one FP32. The integer
part is exact whatever the route; the float part repeats the reference's ops one by one on
the same operands, in the same order.

Bit-exactness and FMA: Triton contracts ``a * b - c`` into one fused multiply-add by
default (``enable_fp_fusion=True``), which rounds once where the reference (eager PyTorch,
one kernel per op; and gguf-py's numpy) rounds twice. Every launch here passes
``enable_fp_fusion=False``, so each ``*`` and ``-`` is its own correctly rounded FP32 op. The
f16 scales widen to FP32 exactly (bit-cast the two little-endian bytes to fp16, then convert).

``impl`` switch: ``gguf_dequant.dequantize(..., impl="auto"|"torch"|"triton")`` calls
``dequantize_blocks`` here when ``usable`` says so (CUDA tensor, Triton importable, type
covered); F32/F16/BF16 stay in torch (they are casts). ``TRITON_INTERPRET=1`` runs the same
kernels on CPU tensors (the tests use that where there is no GPU).
"""

from __future__ import annotations

import os

import torch
from gguf import GGMLQuantizationType as QT

from layerbisect.kernels import on_device

try:  # pragma: no cover - depends on the environment
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
    _IMPORT_ERROR = ""
except Exception as e:  # noqa: BLE001 - any import failure means "no Triton"
    TRITON_AVAILABLE = False
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

__all__ = ["SUPPORTED", "TRITON_AVAILABLE", "dequantize_blocks", "usable", "why_not"]

NUM_WARPS = 4  # benchmarks/triton_dequant_sweep.py measures the alternatives

# qtype → (kernel id, block_size, type_size, blocks per program)
SUPPORTED: dict[QT, tuple[int, int, int, int]] = {
    QT.Q4_0: (0, 32, 18, 64),
    QT.Q4_1: (1, 32, 20, 64),
    QT.Q5_0: (2, 32, 22, 64),
    QT.Q5_1: (3, 32, 24, 64),
    QT.Q8_0: (4, 32, 34, 64),
    QT.Q2_K: (5, 256, 84, 8),
    QT.Q4_K: (6, 256, 144, 8),
    QT.Q5_K: (7, 256, 176, 8),
    QT.Q6_K: (8, 256, 210, 8),
}


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def why_not() -> str:
    if not TRITON_AVAILABLE:
        return f"triton not importable ({_IMPORT_ERROR})"
    return "no CUDA device" if not torch.cuda.is_available() else "type not covered"


def usable(qtype: QT, device: torch.device) -> bool:
    """True when ``dequantize_blocks`` can run this type on this device."""
    return TRITON_AVAILABLE and QT(qtype) in SUPPORTED and device.type == "cuda" and torch.cuda.is_available()


if TRITON_AVAILABLE:

    @triton.jit
    def _f16(p, ok):
        """Two little-endian bytes at p → fp16 → fp32 (exact widening)."""
        lo = tl.load(p, mask=ok, other=0).to(tl.int32)
        hi = tl.load(p + 1, mask=ok, other=0).to(tl.int32)
        return (lo | (hi << 8)).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _i8f(v):
        """A byte value 0..255 (int32) read as int8, as float32."""
        return v.to(tl.uint8).to(tl.int8, bitcast=True).to(tl.float32)

    @triton.jit
    def _k_scale_min(sp, s, ok):
        """6-bit scale and min of sub-block s (0..7) from the 12-byte block at sp (see ``_k_scale_min``)."""
        lo = s < 4
        j = tl.where(lo, s, s - 4)
        b_d = tl.load(sp + j, mask=ok, other=0).to(tl.int32)  # bytes 0..3
        b_m = tl.load(sp + 4 + j, mask=ok, other=0).to(tl.int32)  # bytes 4..7
        b_md = tl.load(sp + 8 + j, mask=ok & (s >= 4), other=0).to(tl.int32)  # bytes 8..11
        sc = tl.where(lo, b_d & 0x3F, (b_md & 0x0F) | ((b_d >> 2) & 0x30))
        mn = tl.where(lo, b_m & 0x3F, (b_md >> 4) | ((b_m >> 2) & 0x30))
        return sc, mn

    @triton.jit
    def _dequant_kernel(
        src,
        dst,
        n_blocks,
        KIND: tl.constexpr,
        BS: tl.constexpr,
        TS: tl.constexpr,
        BPP: tl.constexpr,
    ):
        pid = tl.program_id(0)
        blk = pid.to(tl.int64) * BPP + tl.arange(0, BPP).to(tl.int64)[:, None]  # (BPP, 1)
        e = tl.arange(0, BS)[None, :]  # (1, BS) element within the block
        okr = blk < n_blocks  # (BPP, 1)
        ok = okr & (e >= 0)  # (BPP, BS)
        base = src + blk * TS  # (BPP, 1) pointer to each block's first byte
        if KIND == 0:
            # Q4_0, 18 B: | d f16 | qs 16 |; qs[j] = q[j+16] << 4 | q[j]; x = d * (q - 8)
            d = _f16(base, okr)
            b = tl.load(base + 2 + (e % 16), mask=ok, other=0).to(tl.int32)
            q = ((b >> (4 * (e // 16))) & 0xF) - 8
            x = d * q.to(tl.float32)
        elif KIND == 1:
            # Q4_1, 20 B: | d f16 | m f16 | qs 16 |; x = (d * q) + m
            d = _f16(base, okr)
            m = _f16(base + 2, okr)
            b = tl.load(base + 4 + (e % 16), mask=ok, other=0).to(tl.int32)
            q = (b >> (4 * (e // 16))) & 0xF
            x = (d * q.to(tl.float32)) + m
        elif KIND == 2:
            # Q5_0, 22 B: | d f16 | qh 4 (LE u32, bit j = bit 4 of element j) | qs 16 |; x = d * (q - 16)
            d = _f16(base, okr)
            h = tl.load(base + 2 + e // 8, mask=ok, other=0).to(tl.int32)
            b = tl.load(base + 6 + (e % 16), mask=ok, other=0).to(tl.int32)
            q = (((b >> (4 * (e // 16))) & 0xF) | (((h >> (e % 8)) & 1) << 4)) - 16
            x = d * q.to(tl.float32)
        elif KIND == 3:
            # Q5_1, 24 B: | d f16 | m f16 | qh 4 | qs 16 |; x = (d * q) + m
            d = _f16(base, okr)
            m = _f16(base + 2, okr)
            h = tl.load(base + 4 + e // 8, mask=ok, other=0).to(tl.int32)
            b = tl.load(base + 8 + (e % 16), mask=ok, other=0).to(tl.int32)
            q = ((b >> (4 * (e // 16))) & 0xF) | (((h >> (e % 8)) & 1) << 4)
            x = (d * q.to(tl.float32)) + m
        elif KIND == 4:
            # Q8_0, 34 B: | d f16 | qs int8 32 |; x = q * d
            d = _f16(base, okr)
            b = tl.load(base + 2 + e, mask=ok, other=0).to(tl.int32)
            x = _i8f(b) * d
        elif KIND == 5:
            # Q2_K, 84 B: | scales 16 (m << 4 | sc) | qs 64 | d f16 | dmin f16 |; 16 sub-blocks of 16
            # x = (d * sc) * q - (dmin * m); q: half h = e // 128, bits 2s of byte 32h + j (s = e%128 // 32)
            d = _f16(base + 80, okr)
            dmin = _f16(base + 82, okr)
            sb = tl.load(base + e // 16, mask=ok, other=0).to(tl.int32)
            dl = d * (sb & 0xF).to(tl.float32)
            ml = dmin * (sb >> 4).to(tl.float32)
            r = e % 128
            b = tl.load(base + 16 + 32 * (e // 128) + (r % 32), mask=ok, other=0).to(tl.int32)
            q = (b >> (2 * (r // 32))) & 3
            x = dl * q.to(tl.float32) - ml
        elif KIND == 6:
            # Q4_K, 144 B: | d f16 | dmin f16 | scales 12 | qs 128 |; 8 sub-blocks of 32
            # qs: chunk c = e // 64: low nibbles → sub-block 2c, high → 2c+1; x = (d * sc) * q - (dmin * m)
            d = _f16(base, okr)
            dmin = _f16(base + 2, okr)
            sc, mn = _k_scale_min(base + 4, e // 32, ok)
            d1 = d * sc.to(tl.float32)
            dm = dmin * mn.to(tl.float32)
            b = tl.load(base + 16 + 32 * (e // 64) + (e % 32), mask=ok, other=0).to(tl.int32)
            q = (b >> (4 * ((e // 32) % 2))) & 0xF
            x = d1 * q.to(tl.float32) - dm
        elif KIND == 7:
            # Q5_K, 176 B: | d | dmin | scales 12 | qh 32 | qs 128 |; qh: bit s of byte j = bit 4 of element 32s + j
            d = _f16(base, okr)
            dmin = _f16(base + 2, okr)
            s = e // 32
            sc, mn = _k_scale_min(base + 4, s, ok)
            d1 = d * sc.to(tl.float32)
            dm = dmin * mn.to(tl.float32)
            h = tl.load(base + 16 + (e % 32), mask=ok, other=0).to(tl.int32)
            b = tl.load(base + 48 + 32 * (e // 64) + (e % 32), mask=ok, other=0).to(tl.int32)
            q = ((b >> (4 * (s % 2))) & 0xF) | (((h >> s) & 1) << 4)
            x = d1 * q.to(tl.float32) - dm
        else:
            # Q6_K, 210 B: | ql 128 | qh 64 | scales int8 16 | d f16 |; x = (d * sc) * (q - 32), 16 sub-blocks of 16
            # ql: half h = e // 128, r = e % 128: byte 64h + r % 64, nibble r // 64
            # qh: byte 32h + r % 32, bits 2 * (r // 32)
            d = _f16(base + 208, okr)
            sc = _i8f(tl.load(base + 192 + e // 16, mask=ok, other=0).to(tl.int32))
            d1 = d * sc
            h = e // 128
            r = e % 128
            lo = tl.load(base + 64 * h + (r % 64), mask=ok, other=0).to(tl.int32)
            hi = tl.load(base + 128 + 32 * h + (r % 32), mask=ok, other=0).to(tl.int32)
            q = (((lo >> (4 * (r // 64))) & 0xF) | (((hi >> (2 * (r // 32))) & 3) << 4)) - 32
            x = d1 * q.to(tl.float32)
        tl.store(dst + blk * BS + e, x, mask=ok)


def dequantize_blocks(blocks: torch.Tensor, qtype: QT, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, type_size) uint8 → (n, block_size) float32 on the same device; bit-exact with the torch classes."""
    if not TRITON_AVAILABLE:
        raise RuntimeError(why_not())
    kind, bs, ts, bpp = SUPPORTED[QT(qtype)]
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != ts:
        got = f"{tuple(blocks.shape)} {blocks.dtype}"
        raise ValueError(f"{QT(qtype).name}: expected (n, {ts}) uint8 blocks, got {got}")
    blocks = blocks.contiguous()
    n = blocks.shape[0]
    if out is None:
        out = torch.empty(n, bs, dtype=torch.float32, device=blocks.device)
    if n == 0:
        return out
    grid = (triton.cdiv(n, bpp),)
    extra = {} if _interpret() else {"enable_fp_fusion": False, "num_warps": NUM_WARPS}
    with on_device(blocks.device):
        _dequant_kernel[grid](blocks, out, n, KIND=kind, BS=bs, TS=ts, BPP=bpp, **extra)
    return out
