"""GGUF tensor dequantization to FP32 in PyTorch, bit-exact with gguf-py.

Design note
-----------
The reference runner needs every GGUF weight as FP32. gguf-py (`gguf/quants.py`) already
does this in numpy; we redo it in PyTorch so the same code runs on a CUDA tensor (where
numpy would mean a round trip through the host) and so a big tensor does not need numpy's
temporaries all at once. gguf-py stays the oracle: the tests compare bit for bit.

How bit-exactness is kept:

* Each class below mirrors one class of `gguf/quants.py` **op for op** in its float part:
  the f16 scales become float32 at the same point (`d.view(f16).astype(f32)`), every
  product and difference is one float32 IEEE op on the same two operands, in the same
  order (`(d * sc) * q - (dmin * m)`, never `d * (sc * q)`). Each float32 op is correctly
  rounded on CPU and CUDA alike, so equal operands give equal bits. Eager PyTorch runs
  every op as its own kernel, so nothing is contracted into an FMA (which would round
  once where numpy rounds twice). Do not rewrite these lines with `addcmul`/`torch.lerp`,
  and do not `torch.compile` them: both may fuse.
* The integer part (unpacking nibbles, bit planes, 6-bit scales) is exact whatever the
  route, so it is free to differ from gguf-py where torch lacks a dtype: gguf-py views a
  `uint32`/`uint16` bit field and shifts it; torch has poor `uint32` support, so we split
  the same field into bytes and take bits byte by byte (little-endian, as GGUF is).
* Look-up tables (IQ4_NL, MXFP4, NVFP4) hold small integers, so looking them up as float32
  directly gives the same values as gguf-py's int8 look-up followed by a cast.

Layout and conventions: a quantized tensor is rows of blocks; a block holds `block_size`
elements in `type_size` bytes; ggml's `ne0` (the fastest dimension, `in_features` for a
weight) is the last numpy dimension. `GGUFReader` hands over F32/F16 tensors as float
arrays of the logical shape and everything else (BF16 included) as `uint8 (rows, row_bytes)`.
Scales always **multiply** (`x = d * q`, or `x = d * q - m` with a positive min `m` for the
`_1`/`_K` types with mins; `Q4_1`/`Q5_1` add `m` instead). No global scale exists in GGUF.

Memory: the input is wrapped, not copied (`torch.from_numpy` on the reader's memmap), then
only this tensor's bytes travel to the target device; dequantization runs in chunks of
blocks so the temporaries stay bounded, writing into one preallocated FP32 output.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

from layerbisect.errors import InputError

__all__ = ["BlockQuant", "dequantize", "dequantize_reader_tensor", "supported_types"]

QK_K = 256  # elements per super-block of the k-quants and IQ4_XS

# Output elements per chunk: bounds the temporaries (a few times the chunk's output). On CPU
# speed is flat from 2^18 to 2^24 single-threaded, and bigger chunks mean fewer intra-op parallel
# regions (which stall badly on an oversubscribed box); on CUDA a chunk must fill the GPU.
_CHUNK_ELEMS = {"cpu": 1 << 22, "cuda": 1 << 26}

_REGISTRY: dict[QT, type[BlockQuant]] = {}


# --- small helpers, shared by the classes ----------------------------------------------------


def _split(blocks: torch.Tensor, *widths: int) -> list[torch.Tensor]:
    """Split (n, type_size) bytes into named fields of these widths; the last field takes the rest."""
    return list(torch.split(blocks, [*widths, blocks.shape[1] - sum(widths)], dim=1))


def _f16(field: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian f16 bytes -> (n, 1) float32, as gguf-py's `view(f16).astype(f32)`."""
    return field.contiguous().view(torch.float16).to(torch.float32)


def _u8(values: Sequence[int], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """A small uint8 constant (shift amounts), shaped for broadcasting."""
    return torch.tensor(values, dtype=torch.uint8, device=device).reshape(shape)


def _bits(field: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 8k) bits; bit i is bit i of the field read as a little-endian integer.

    gguf-py shifts a `uint32`/`uint16` view by `arange(8k)`; this is the same bits, byte by byte.
    """
    n = field.shape[0]
    return ((field.reshape(n, -1, 1) >> _u8(range(8), (1, 1, 8), field.device)) & 1).reshape(n, -1)


def _lut(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


# --- the registry ----------------------------------------------------------------------------


class BlockQuant:
    """One GGML tensor type: `dequantize_blocks` maps (n, type_size) uint8 -> (n, block_size) f32.

    Subclasses register themselves by `qtype`; `block_size`/`type_size` come from gguf's
    `GGML_QUANT_SIZES`, so they cannot drift from the file format.
    """

    qtype: ClassVar[QT]
    block_size: ClassVar[int]
    type_size: ClassVar[int]

    def __init_subclass__(cls, qtype: QT, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.qtype = qtype
        cls.block_size, cls.type_size = gguf.GGML_QUANT_SIZES[qtype]
        assert qtype not in _REGISTRY, qtype
        _REGISTRY[qtype] = cls

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# --- plain floats ----------------------------------------------------------------------------


class F32(BlockQuant, qtype=QT.F32):
    """IEEE float32, little-endian. Copied, so the result never aliases the memory map."""

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.contiguous().view(torch.float32).clone()


class F16(BlockQuant, qtype=QT.F16):
    """IEEE float16, little-endian; widening to float32 is exact."""

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.contiguous().view(torch.float16).to(torch.float32)


class BF16(BlockQuant, qtype=QT.BF16):
    """bfloat16: the high half of a float32. `(int16 -> int32) << 16`, as gguf-py (NaN payloads kept)."""

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        return (blocks.contiguous().view(torch.int16).to(torch.int32) << 16).view(torch.float32)


# --- legacy 32-element blocks ----------------------------------------------------------------


class Q4_0(BlockQuant, qtype=QT.Q4_0):
    """x = d * (q - 8), q in 0..15.

    18 bytes: | d f16 (2) | qs (16) |
    qs[j] = q[j+16] << 4 | q[j]     (low nibbles: elements 0..15, high nibbles: 16..31)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        d, qs = _split(blocks, 2)
        d = _f16(d)
        qs = qs.reshape(n, 1, 16) >> _u8([0, 4], (1, 2, 1), blocks.device)
        q = (qs & 0x0F).reshape(n, 32).to(torch.int8) - 8
        return d * q.to(torch.float32)


class Q4_1(BlockQuant, qtype=QT.Q4_1):
    """x = d * q + m, q in 0..15.

    20 bytes: | d f16 (2) | m f16 (2) | qs (16) |   (qs as in Q4_0)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        d, m, qs = _split(blocks, 2, 2)
        d, m = _f16(d), _f16(m)
        qs = qs.reshape(n, 1, 16) >> _u8([0, 4], (1, 2, 1), blocks.device)
        q = (qs & 0x0F).reshape(n, 32).to(torch.float32)
        return (d * q) + m


class Q5_0(BlockQuant, qtype=QT.Q5_0):
    """x = d * (q - 16), q in 0..31: a Q4_0 nibble plus a fifth bit from qh.

    22 bytes: | d f16 (2) | qh (4) | qs (16) |
    qh read as a little-endian uint32: bit j is bit 4 of element j
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        d, qh, qs = _split(blocks, 2, 4)
        d = _f16(d)
        qh = _bits(qh)  # (n, 32)
        ql = (qs.reshape(n, 1, 16) >> _u8([0, 4], (1, 2, 1), blocks.device)) & 0x0F
        q = (ql.reshape(n, 32) | (qh << 4)).to(torch.int8) - 16
        return d * q.to(torch.float32)


class Q5_1(BlockQuant, qtype=QT.Q5_1):
    """x = d * q + m, q in 0..31.

    24 bytes: | d f16 (2) | m f16 (2) | qh (4) | qs (16) |   (qh, qs as in Q5_0)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        d, m, qh, qs = _split(blocks, 2, 2, 4)
        d, m = _f16(d), _f16(m)
        qh = _bits(qh)
        ql = (qs.reshape(n, 1, 16) >> _u8([0, 4], (1, 2, 1), blocks.device)) & 0x0F
        q = (ql.reshape(n, 32) | (qh << 4)).to(torch.float32)
        return (d * q) + m


class Q8_0(BlockQuant, qtype=QT.Q8_0):
    """x = q * d, q int8.

    34 bytes: | d f16 (2) | qs int8 (32) |
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        d, x = _split(blocks, 2)
        d = _f16(d)
        x = x.contiguous().view(torch.int8).to(torch.float32)
        return x * d


# --- k-quants: 256-element super-blocks of 16 or 8 sub-blocks ---------------------------------


class Q2_K(BlockQuant, qtype=QT.Q2_K):
    """x = (d * sc) * q - (dmin * m), q in 0..3; 16 sub-blocks of 16.

    84 bytes: | scales (16) | qs (64) | d f16 (2) | dmin f16 (2) |
    scales[i] = m_i << 4 | sc_i
    qs: two halves of 32 bytes; in half h, bits 2s..2s+1 of byte j hold element 128h + 32s + j
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        scales, qs, d, dmin = _split(blocks, QK_K // 16, QK_K // 4, 2)
        d, dmin = _f16(d), _f16(dmin)

        dl = (d * (scales & 0xF).to(torch.float32)).reshape(n, 16, 1)
        ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)

        q = (qs.reshape(n, -1, 1, 32) >> _u8([0, 2, 4, 6], (1, 1, 4, 1), blocks.device)) & 3
        q = q.reshape(n, 16, 16).to(torch.float32)

        return (dl * q - ml).reshape(n, QK_K)


class Q3_K(BlockQuant, qtype=QT.Q3_K):
    """x = (d * (sc - 32)) * (q - 4 * (1 - hbit)), q in 0..3; 16 sub-blocks of 16.

    110 bytes: | hmask (32) | qs (64) | scales (12) | d f16 (2) |
    hmask: bit b of byte j is the high bit of element 32b + j (a set bit means no -4 offset)
    qs: as Q2_K's
    scales, 16 x 6 bits (A..P, lower case: their high 2 bits):
       0: IIIIAAAA   4: MMMMEEEE   8: mmiieeaa
       1: JJJJBBBB   5: NNNNFFFF   9: nnjjffbb
       2: KKKKCCCC   6: OOOOGGGG  10: ookkggcc
       3: LLLLDDDD   7: PPPPHHHH  11: ppllhhdd
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        dev = blocks.device
        hmask, qs, scales, d = _split(blocks, QK_K // 8, QK_K // 4, 12)
        d = _f16(d)

        lscales, hscales = _split(scales, 8)
        lscales = (lscales.reshape(n, 1, 8) >> _u8([0, 4], (1, 2, 1), dev)).reshape(n, 16)
        hscales = (hscales.reshape(n, 1, 4) >> _u8([0, 2, 4, 6], (1, 4, 1), dev)).reshape(n, 16)
        sc = (lscales & 0x0F) | ((hscales & 0x03) << 4)
        sc = (sc.to(torch.int8) - 32).to(torch.float32)

        dl = (d * sc).reshape(n, 16, 1)

        ql = qs.reshape(n, -1, 1, 32) >> _u8([0, 2, 4, 6], (1, 1, 4, 1), dev)
        qh = hmask.reshape(n, -1, 1, 32) >> _u8(range(8), (1, 1, 8, 1), dev)
        ql = ql.reshape(n, 16, 16) & 3
        qh = (qh.reshape(n, 16, 16) & 1) ^ 1  # the -4 offset applies where the mask bit is 0
        q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).to(torch.float32)

        return (dl * q).reshape(n, QK_K)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte block of 8 six-bit scales (A..H) and 8 six-bit mins (a..h) of Q4_K/Q5_K.

     0: EEAAAAAA   4: eeaaaaaa   8: eeeeEEEE
     1: FFBBBBBB   5: ffbbbbbb   9: ffffFFFF
     2: GGCCCCCC   6: ggcccccc  10: ggggGGGG
     3: HHDDDDDD   7: hhdddddd  11: hhhhHHHH
    """
    n = scales.shape[0]
    d, m, m_d = scales.reshape(n, 3, 4).unbind(1)
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn  # (n, 8) each


class Q4_K(BlockQuant, qtype=QT.Q4_K):
    """x = (d * sc) * q - (dmin * m), q in 0..15; 8 sub-blocks of 32.

    144 bytes: | d f16 (2) | dmin f16 (2) | scales (12) | qs (128) |
    scales: see `_k_scale_min`
    qs: four chunks of 32 bytes; chunk c: low nibbles -> sub-block 2c, high nibbles -> 2c+1
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        d, dmin, scales, qs = _split(blocks, 2, 2, 12)
        d, dmin = _f16(d), _f16(dmin)
        sc, m = _k_scale_min(scales)

        d = (d * sc.to(torch.float32)).reshape(n, -1, 1)
        dm = (dmin * m.to(torch.float32)).reshape(n, -1, 1)

        q = qs.reshape(n, -1, 1, 32) >> _u8([0, 4], (1, 1, 2, 1), blocks.device)
        q = (q & 0x0F).reshape(n, -1, 32).to(torch.float32)

        return (d * q - dm).reshape(n, QK_K)


class Q5_K(BlockQuant, qtype=QT.Q5_K):
    """x = (d * sc) * q - (dmin * m), q in 0..31; 8 sub-blocks of 32.

    176 bytes: | d f16 (2) | dmin f16 (2) | scales (12) | qh (32) | qs (128) |
    qs: as Q4_K's (low 4 bits); qh: bit s of byte j is bit 4 of element 32s + j
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        dev = blocks.device
        d, dmin, scales, qh, qs = _split(blocks, 2, 2, 12, QK_K // 8)
        d, dmin = _f16(d), _f16(dmin)
        sc, m = _k_scale_min(scales)

        d = (d * sc.to(torch.float32)).reshape(n, -1, 1)
        dm = (dmin * m.to(torch.float32)).reshape(n, -1, 1)

        ql = qs.reshape(n, -1, 1, 32) >> _u8([0, 4], (1, 1, 2, 1), dev)
        qh = qh.reshape(n, -1, 1, 32) >> _u8(range(8), (1, 1, 8, 1), dev)
        ql = (ql & 0x0F).reshape(n, -1, 32)
        qh = (qh & 0x01).reshape(n, -1, 32)
        q = (ql | (qh << 4)).to(torch.float32)

        return (d * q - dm).reshape(n, QK_K)


class Q6_K(BlockQuant, qtype=QT.Q6_K):
    """x = (d * sc) * (q - 32), q in 0..63, sc int8; 16 sub-blocks of 16.

    210 bytes: | ql (128) | qh (64) | scales int8 (16) | d f16 (2) |
    ql: two halves of 64 bytes; half h: low nibbles -> elements 128h + 0..63, high -> 128h + 64..127
    qh: two halves of 32 bytes; half h, bits 2s..2s+1 of byte j -> bits 4..5 of element 128h + 32s + j
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        dev = blocks.device
        ql, qh, scales, d = _split(blocks, QK_K // 2, QK_K // 4, QK_K // 16)

        scales = scales.contiguous().view(torch.int8).to(torch.float32)
        d = _f16(d)
        d = (d * scales).reshape(n, QK_K // 16, 1)

        ql = ql.reshape(n, -1, 1, 64) >> _u8([0, 4], (1, 1, 2, 1), dev)
        ql = (ql & 0x0F).reshape(n, -1, 32)
        qh = qh.reshape(n, -1, 1, 32) >> _u8([0, 2, 4, 6], (1, 1, 4, 1), dev)
        qh = (qh & 0x03).reshape(n, -1, 32)
        q = (ql | (qh << 4)).to(torch.int8) - 32
        q = q.reshape(n, QK_K // 16, -1).to(torch.float32)

        return (d * q).reshape(n, QK_K)


# --- non-linear 4-bit codebooks --------------------------------------------------------------

IQ4_NL_KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


class IQ4_NL(BlockQuant, qtype=QT.IQ4_NL):
    """x = d * kvalues[q], q in 0..15.

    18 bytes: | d f16 (2) | qs (16) |   (nibbles as in Q4_0)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        d, qs = _split(blocks, 2)
        d = _f16(d)
        qs = (qs.reshape(n, 1, 16) >> _u8([0, 4], (1, 2, 1), blocks.device)) & 0x0F
        q = _lut(IQ4_NL_KVALUES, blocks.device)[qs.reshape(n, 32).long()]
        return d * q


class IQ4_XS(BlockQuant, qtype=QT.IQ4_XS):
    """x = (d * (sc - 32)) * kvalues[q]; 8 sub-blocks of 32, 6-bit scales.

    136 bytes: | d f16 (2) | scales_h (2) | scales_l (4) | qs (128) |
    sub-block s: sc = (scales_l[s // 2] >> 4 * (s % 2)) & 0xF | ((scales_h as LE uint16 >> 2s) & 3) << 4
    qs: 16 bytes per sub-block, low nibbles -> elements 0..15, high -> 16..31
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        dev = blocks.device
        d, scales_h, scales_l, qs = _split(blocks, 2, 2, QK_K // 64)
        d = _f16(d)

        scales_l = (scales_l.reshape(n, -1, 1) >> _u8([0, 4], (1, 1, 2), dev)).reshape(n, -1) & 0x0F
        # bits 2s..2s+1 of the LE uint16: byte s // 4, shift 2 * (s % 4)
        scales_h = (scales_h.reshape(n, -1, 1) >> _u8([0, 2, 4, 6], (1, 1, 4), dev)).reshape(n, -1) & 0x03
        sc = (scales_l | (scales_h << 4)).to(torch.int8) - 32
        dl = (d * sc.to(torch.float32)).reshape(n, -1, 1)

        q = qs.reshape(n, -1, 1, 16) >> _u8([0, 4], (1, 1, 2, 1), dev)
        q = q.reshape(n, -1, 32) & 0x0F
        q = _lut(IQ4_NL_KVALUES, dev)[q.long()]

        return (dl * q).reshape(n, QK_K)


# --- IQ3: grid look-ups ---------------------------------------------------------------------
# Each group of 4 elements is an entry of a fixed grid of small positive integers (gguf-py's
# ``grid_hex``, decoded by its own ``init_grid``: we take the table from gguf-py itself, so it
# cannot drift), signs come from separate bits, and a sub-block scale multiplies. The grid
# values are small integers, so a float32 look-up equals gguf-py's.


def _grid(qtype: QT, device: torch.device) -> torch.Tensor:
    """gguf-py's decoded grid of ``qtype`` as float32 (entries, values per entry)."""
    cls = {QT.IQ3_S: gguf.quants.IQ3_S, QT.IQ3_XXS: gguf.quants.IQ3_XXS}[qtype]
    cls.init_grid()
    assert cls.grid is not None
    return torch.from_numpy(np.ascontiguousarray(cls.grid.reshape(cls.grid_shape))).to(device)


def _ksigns(device: torch.device) -> torch.Tensor:
    """IQ2_XXS's ``ksigns``: 7 stored sign bits -> 8 (the 8th makes the parity even), as uint8."""
    return torch.frombuffer(bytearray(gguf.quants.IQ2_XXS.ksigns), dtype=torch.uint8).to(device)


def _signs(bits: torch.Tensor) -> torch.Tensor:
    """Sign bits (0 -> +1, 1 -> -1) as float32, as gguf-py's ``np.where(signs == 0, 1, -1)``."""
    return torch.where(bits == 0, 1.0, -1.0).to(torch.float32)


class IQ3_XXS(BlockQuant, qtype=QT.IQ3_XXS):
    """x = ((d * (0.5 + s)) * 0.5) * grid[q] * sign; 8 sub-blocks of 32, 4-bit scales s.

    98 bytes: | d f16 (2) | qs (64): one 8-bit grid index per 4 elements | scales_and_signs (32) |
    scales_and_signs: one LE uint32 per sub-block: 4 x 7-bit ``ksigns`` indices (bits 0..27,
    one per 8 elements) and the scale s in bits 28..31. Grid: 256 entries of 4 values.
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        dev = blocks.device
        d, qs, sas = _split(blocks, 2, QK_K // 4)
        d = _f16(d)
        sas = sas.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # (n, 8) LE uint32
        db = ((d * (0.5 + (sas >> 28).to(torch.float32))) * 0.5).reshape(n, -1, 1, 1)
        idx = (sas.reshape(n, -1, 1) >> torch.tensor([0, 7, 14, 21], device=dev).reshape(1, 1, 4)) & 0x7F
        signs = _ksigns(dev)[idx].reshape(n, -1, 4, 1) >> _u8(range(8), (1, 1, 1, 8), dev)
        signs = _signs(signs & 1).reshape(n, -1, 4, 8)
        grid = _grid(QT.IQ3_XXS, dev)[qs.long()].reshape(n, -1, 4, 8)
        return (db * grid * signs).reshape(n, QK_K)


class IQ3_S(BlockQuant, qtype=QT.IQ3_S):
    """x = (d * (1 + 2s)) * grid[q] * sign; 8 sub-blocks of 32, 4-bit scales s.

    110 bytes: | d f16 (2) | qs (64) | qh (8) | signs (32) | scales (4) |
    grid index (9 bits) = qs[j] | bit j of qh << 8, one per 4 elements; sign of element k =
    bit k of ``signs``; scales: two nibbles per byte, low nibble first. Grid: 512 x 4 values.
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        dev = blocks.device
        d, qs, qh, signs, scales = _split(blocks, 2, QK_K // 4, QK_K // 32, QK_K // 8)
        d = _f16(d)
        sc = ((scales.reshape(n, -1, 1) >> _u8([0, 4], (1, 1, 2), dev)) & 0x0F).reshape(n, -1)
        db = (d * (1 + 2 * sc).to(torch.float32)).reshape(n, -1, 1, 1)  # 1 + 2s <= 31: exact in uint8
        sg = _signs(_bits(signs)).reshape(n, -1, 4, 8)
        q = qs.to(torch.int64) | (_bits(qh).to(torch.int64) << 8)
        grid = _grid(QT.IQ3_S, dev)[q].reshape(n, -1, 4, 8)
        return (db * grid * sg).reshape(n, QK_K)


# --- microscaling FP4 ------------------------------------------------------------------------

# E2M1 values doubled, so they are integers; the scale is halved to compensate (ggml convention).
E2M1_X2 = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)


def _e8m0_to_fp32_half(e: torch.Tensor) -> torch.Tensor:
    """2**(e - 127) / 2 as float32 bits, as ggml_e8m0_to_fp32_half (e < 2 gives subnormals)."""
    e = e.to(torch.int32)
    bits = torch.where(e < 2, 0x00200000 << e, (e - 1) << 23)
    return bits.view(torch.float32)


class MXFP4(BlockQuant, qtype=QT.MXFP4):
    """x = (2**(e - 127) / 2) * E2M1_X2[q]: OCP MX FP4, 32 elements, one E8M0 exponent.

    17 bytes: | e e8m0 (1) | qs (16) |   (nibbles as in Q4_0; bit 3 of a nibble is the sign)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        e, qs = _split(blocks, 1)
        d = _e8m0_to_fp32_half(e)  # (n, 1)
        qs = (qs.reshape(n, 1, 16) >> _u8([0, 4], (1, 2, 1), blocks.device)) & 0x0F
        q = _lut(E2M1_X2, blocks.device)[qs.reshape(n, 32).long()]
        return d * q


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2**k as float32 for int32 k in the normal range, built from its bits: exact by construction."""
    return ((k + 127) << 23).view(torch.float32)


def _ue4m3_to_fp32_half(x: torch.Tensor) -> torch.Tensor:
    """Unsigned E4M3 (bias 7) / 2, as gguf-py's NVFP4.ue4m3_to_fp32; 0x00 and 0x7F (NaN) give 0.

    Every value here is a short binary fraction, exact in float32, so computing it through
    int32 and exact powers of two gives the same bits as gguf-py's float expression.
    """
    x = x.to(torch.int32)
    exp = (x >> 3) & 0xF
    man = (x & 0x7).to(torch.float32)
    normal = (8.0 + man) * _pow2(exp - 10)  # (1 + man/8) * 2**(exp-7)
    sub = man * _pow2(torch.full_like(exp, -9))
    raw = torch.where(exp == 0, sub, normal)
    return torch.where((x == 0) | (x == 0x7F), torch.zeros_like(raw), raw * 0.5)


class NVFP4(BlockQuant, qtype=QT.NVFP4):
    """x = (ue4m3(s) / 2) * E2M1_X2[q]: ggml's NVFP4, 64 elements as 4 groups of 16.

    36 bytes: | s ue4m3 x4 (4) | qs (32) |
    group g: qs[8g .. 8g+8]; low nibbles -> elements 16g + 0..7, high -> 16g + 8..15
    No per-tensor global scale in GGUF (unlike the compressed-tensors NVFP4 checkpoints).
    """

    @classmethod
    def dequantize_blocks(cls, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        s, qs = _split(blocks, 4)
        d = _ue4m3_to_fp32_half(s).reshape(n, 4, 1)
        qs = qs.reshape(n, 4, 8)
        q = torch.cat([qs & 0x0F, qs >> 4], dim=-1)  # (n, 4, 16)
        q = _lut(E2M1_X2, blocks.device)[q.long()]
        return (d * q).reshape(n, 64)


# --- public API ------------------------------------------------------------------------------


def supported_types() -> list[str]:
    """Names of the GGML tensor types `dequantize` handles, in enum order."""
    return [qt.name for qt in sorted(_REGISTRY, key=int)]


def _resolve_type(qtype: QT | int, name: str) -> type[BlockQuant]:
    try:
        qt = QT(int(qtype))
    except (TypeError, ValueError):
        supported = ", ".join(supported_types())
        raise InputError(name, f"unknown GGML tensor type {qtype!r} (supported: {supported})") from None
    cls = _REGISTRY.get(qt)
    if cls is None:
        raise InputError(name, f"tensor type {qt.name} is not supported (supported: {', '.join(supported_types())})")
    return cls


def as_torch(data: object, name: str) -> torch.Tensor:
    """Wrap numpy data (a memmap included) without copying it, or pass a torch tensor through."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, np.ndarray):
        arr = data
        if not arr.dtype.isnative:
            raise InputError(name, f"data has non-native byte order {arr.dtype}")
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        with warnings.catch_warnings():
            # The reader's memmap is read-only; we only ever read it, and the result is a new tensor.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(arr)
    raise InputError(name, f"expected a numpy array or torch tensor, got {type(data).__name__}")


def dequantize(
    data: np.ndarray | torch.Tensor,
    qtype: QT | int,
    shape: Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
    name: str = "tensor",
    impl: str = "auto",
) -> torch.Tensor:
    """Dequantize one GGUF tensor to float32 on `device` (default: where `data` is).

    `data` is `ReaderTensor.data` (uint8 `(rows, row_bytes)` for block types and BF16, the
    float array itself for F32/F16) or a torch tensor of the same. The result has the logical
    shape in numpy order (a 2-D weight: `(ne1, ne0)` = `(out_features, in_features)`), or
    `shape` where given (same element count). Bit-exact with `gguf.quants.dequantize`.

    `impl`: "torch" (the classes above), "triton" (`layerbisect.kernels.gguf_triton`, CUDA, the
    types it covers), or "auto" (Triton on CUDA where it covers the type, else torch). Same bits.
    """
    cls = _resolve_type(qtype, name)
    raw = as_torch(data, name)
    if raw.ndim == 0:
        raw = raw.reshape(1)

    if raw.dtype == torch.uint8:
        row_bytes = raw.shape[-1]
        if row_bytes % cls.type_size:
            raise InputError(
                name,
                f"{cls.qtype.name} row of {row_bytes} bytes is not a whole number of "
                f"{cls.type_size}-byte blocks",
            )
        logical = (*raw.shape[:-1], row_bytes // cls.type_size * cls.block_size)
    elif cls.block_size == 1 and raw.element_size() == cls.type_size:
        logical = tuple(raw.shape)
        raw = raw.contiguous().view(torch.uint8)
    else:
        raise InputError(name, f"{cls.qtype.name} data must be raw bytes (uint8), got {raw.dtype}")

    n_elems = 1
    for dim in logical:
        n_elems *= dim
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        want = 1
        for dim in shape:
            want *= dim
        if want != n_elems:
            raise InputError(name, f"shape {list(shape)} has {want} elements but the data holds {n_elems}")
        logical = shape

    dev = torch.device(device) if device is not None else raw.device
    blocks = raw.reshape(-1, cls.type_size).to(dev)  # only this tensor's bytes are read / moved
    n_blocks = blocks.shape[0]

    if impl not in ("auto", "torch", "triton"):
        raise InputError(name, f"impl {impl!r} is not one of auto, torch, triton")
    if impl != "torch" and n_blocks:
        from layerbisect.kernels import gguf_triton

        if gguf_triton.usable(cls.qtype, dev):
            return gguf_triton.dequantize_blocks(blocks, cls.qtype).reshape(logical)
        if impl == "triton":
            raise InputError(name, f"no Triton dequantization for {cls.qtype.name} on {dev} ({gguf_triton.why_not()})")

    chunk = max(1, _CHUNK_ELEMS.get(dev.type, 1 << 26) // cls.block_size)
    if n_blocks <= chunk:
        out = cls.dequantize_blocks(blocks)
    else:
        out = torch.empty(n_blocks, cls.block_size, dtype=torch.float32, device=dev)
        for start in range(0, n_blocks, chunk):
            out[start : start + chunk] = cls.dequantize_blocks(blocks[start : start + chunk])
    return out.reshape(logical)


def dequantize_reader_tensor(
    t: gguf.gguf_reader.ReaderTensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """`dequantize` for a tensor from `gguf.GGUFReader`, shape taken from the file (numpy order)."""
    shape = tuple(reversed([int(x) for x in t.shape]))
    return dequantize(t.data, t.tensor_type, shape, device=device, name=t.name)
